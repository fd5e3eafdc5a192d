"""The answer to the server's start-up info query: the node's data claim and what device it is.

Every message to a deployed SuperNode starts a fresh ClientApp process. With a shared dataset this path
imports only Flower and the run config: no torch, transformers, peft or datasets, and no data is loaded
(the node config is checked here; a data problem shows in the node's first training reply). A node with
its own data reads it here, so a file that does not fit the run is refused at start-up.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.devices import profile_for
from fedcore.data.sources import data_source


def node_info(node_config: dict[str, Any], cfg: RunConfig) -> RecordDict:
    """What a plan needs: the node's data claim (partition, or example count) and its device profile."""
    source = data_source(cfg, node_config)
    profile = profile_for(source.partition_id, cfg.devices.profiles, node_config)
    return RecordDict({wire.NODE_INFO: ConfigRecord({**source.info(cfg), **profile.as_config()})})
