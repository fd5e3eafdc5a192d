"""Where a client's rows come from: one interface, two kinds, chosen by the run's ``data.name``.

``SharedPartition``: partition ``partition-id`` of the run's shared dataset, which every client and the
server derive independently from the run seed (simulation, benchmarks). ``NodeData``: the node's own file,
named by its node config's ``data-path`` (``data.name='node'``, deployment). That file is read on the node
only: the start-up info reply states the node's training-example count and nothing else about its data.
In node-data mode there is no partition to claim; the server knows the client by its node id.

This module imports no data library, so the info query of a shared-dataset run answers without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedcore.config import NODE_DATA, RunConfig
from fedcore.core import wire

if TYPE_CHECKING:
    from fedcore.data.splits import ClientSplits

#: node config key: the node's own data (a .csv/.jsonl/.parquet file or a save_to_disk folder)
NODE_DATA_PATH = "data-path"


class DataSource(Protocol):
    @property
    def client_key(self) -> str:
        """Names this client's folder among a node's personal layers."""
        ...

    @property
    def partition_id(self) -> int | None:
        """The partition claimed from the server; None = the node's own data (no partition)."""
        ...

    def splits(self, cfg: RunConfig) -> ClientSplits:
        """The client's training rows and local test rows."""
        ...

    def info(self, cfg: RunConfig) -> dict[str, Any]:
        """What the server's plans need to know about this data (info reply keys)."""
        ...


@dataclass(frozen=True)
class SharedPartition:
    partition_id: int
    num_partitions: int

    @property
    def client_key(self) -> str:
        return f"partition-{self.partition_id}"

    def splits(self, cfg: RunConfig) -> ClientSplits:
        from fedcore.data.splits import client_splits

        data, task = cfg.data, cfg.model.task
        return client_splits(data, task, cfg.seed, self.partition_id, self.num_partitions)

    def info(self, cfg: RunConfig) -> dict[str, Any]:
        """The claim only: answered without loading data, so the start-up query stays fast."""
        return {wire.NODE_PARTITION_ID: self.partition_id, wire.NODE_NUM_PARTITIONS: self.num_partitions}


@dataclass(frozen=True)
class NodeData:
    path: str

    client_key = "node-data"
    partition_id = None

    def splits(self, cfg: RunConfig) -> ClientSplits:
        from fedcore.data.splits import node_splits

        return node_splits(cfg.data, cfg.model.task, cfg.seed, self.path)

    def info(self, cfg: RunConfig) -> dict[str, Any]:
        """The training-example count (bounds the node's aggregation weight); reading the file here also
        refuses a node whose data does not fit the run (labels, columns) before its first round."""
        return {wire.NODE_NUM_EXAMPLES: len(self.splits(cfg).train)}


def data_source(cfg: RunConfig, node_config: dict[str, Any]) -> DataSource:
    """The node's data source: its own file when the run says ``data.name='node'``, else its partition."""
    stated = node_config.get(NODE_DATA_PATH)
    if cfg.data.name == NODE_DATA:
        if not stated:
            raise ValueError(
                f"node config lacks {NODE_DATA_PATH}: the run trains every node on its own data "
                f'(data.name={NODE_DATA!r}); start the SuperNode with --node-config "{NODE_DATA_PATH}=<file>"'
            )
        return NodeData(str(Path(str(stated)).expanduser()))
    if stated:
        raise ValueError(
            f"node config {NODE_DATA_PATH} is set, but this run partitions the shared dataset "
            f"data.name={cfg.data.name!r}; run with --run-config \"data.name='{NODE_DATA}'\" to train on "
            f"the nodes' own data, or start the SuperNode without {NODE_DATA_PATH}"
        )
    return SharedPartition(*node_partition(cfg, node_config))


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
