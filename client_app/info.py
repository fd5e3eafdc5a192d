"""The answer to the server's start-up info query: the node's data claim and what device it is.

Every message to a deployed SuperNode starts a fresh ClientApp process. With a shared dataset this path
imports only Flower and the run config: no torch, transformers, peft or datasets, and no data is loaded
(the node config is checked here; a data problem shows in the node's first training reply). A node with
its own data reads it here, so a file that does not fit the run is refused at start-up, and a deployed
node that names no device measures itself here on the run's model (``fedcore.training.calibrate``).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.devices import DeviceProfile, profile_for
from fedcore.data.sources import data_source


def node_info(node_config: dict[str, Any], cfg: RunConfig, simulated: bool = True) -> RecordDict:
    """What a plan needs: the node's data claim (partition, or example count) and its device profile."""
    source = data_source(cfg, node_config)
    profile = node_profile(source.partition_id, node_config, cfg, simulated)
    return RecordDict({wire.NODE_INFO: ConfigRecord({**source.info(cfg), **profile.as_config()})})


def node_profile(
    partition_id: int | None, node_config: dict[str, Any], cfg: RunConfig, simulated: bool
) -> DeviceProfile:
    """A named device from the node config; else in simulation the run's profile list, cycled over
    partitions; else what the node measures now on the run's model, stated values winning."""
    if simulated or "device" in node_config:
        return profile_for(partition_id if simulated else None, cfg.devices.profiles, node_config)
    from fedcore.training.calibrate import calibrate  # torch and the model: only a node that measures

    return calibrate(cfg).profile(node_config)


def simulated(content: RecordDict) -> bool:
    """Whether the server runs a simulation (it says so in the message's run record; absent: yes)."""
    run = content.config_records.get(wire.RUN)
    return bool(run.get(wire.SIMULATED, True)) if run is not None else True
