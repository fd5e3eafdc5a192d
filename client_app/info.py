"""The answer to the server's start-up info query: which partition this node holds and what device it is.

Every message to a deployed SuperNode starts a fresh ClientApp process, so this path imports only Flower
and the run config: no torch, transformers, peft or datasets, and no data is loaded (the node config is
checked here; a data problem shows in the node's first training reply, with its reason).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.devices import profile_for


def node_partition(cfg: RunConfig, node_config: dict[str, Any]) -> tuple[int, int]:
    """(partition id, number of partitions) from the SuperNode's node config."""
    try:
        partition_id = int(node_config[wire.NODE_PARTITION_ID])
        num_partitions = cfg.clients.num_partitions or int(node_config[wire.NODE_NUM_PARTITIONS])
    except KeyError as missing:
        raise ValueError(
            f"node config lacks {missing}: start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        ) from None
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config partition-id={partition_id} is outside 0..{num_partitions - 1} "
            f"(num-partitions={num_partitions})"
        )
    return partition_id, num_partitions


def node_info(node_config: dict[str, Any], cfg: RunConfig) -> RecordDict:
    """Who this client is and what device it has."""
    partition_id, _ = node_partition(cfg, node_config)
    profile = profile_for(partition_id, cfg.devices.profiles, node_config)
    info = {k: v for k, v in node_config.items() if isinstance(v, (int, float, str, bool))}
    info.update(profile.as_config())
    info[wire.NODE_PARTITION_ID] = partition_id
    return RecordDict({wire.NODE_INFO: ConfigRecord(info)})
