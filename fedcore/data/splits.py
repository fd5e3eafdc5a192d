"""The run's data splits as each side sees them: the server's test set, each client's own rows.

With a shared dataset, server and clients derive the same splits independently from the run config and
seed, so no data crosses the wire. With node data (``data.name='node'``) each node splits its own file and
the server holds only its own held-out file (``data.server-test``), if any. Results are cached per
process: in simulation a Ray actor serves many rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from datasets import Dataset

from fedcore.config import NODE_DATA, DataConfig
from fedcore.data import tables


@dataclass(frozen=True)
class ServerSplits:
    pool: Dataset  # what the clients partition among themselves
    test: Dataset  # held out on the server
    validation: Dataset  # held out on the server for tuning (empty unless data.validation-fraction > 0)
    num_labels: int


@dataclass(frozen=True)
class ClientSplits:
    train: Dataset
    test: Dataset  # the client's own held-out data (personalised evaluation)
    num_labels: int


@lru_cache(maxsize=2)
def server_splits(cfg: DataConfig, task: str, seed: int) -> ServerSplits:
    if cfg.name == NODE_DATA:
        return _node_federation_server_splits(cfg, task, seed)
    table = tables.load_dataset_table(cfg, task, seed)
    pool, test = tables.server_split(table, cfg, seed)
    pool, validation = tables.validation_split(pool, cfg, seed)
    return ServerSplits(pool, test, validation, tables.num_labels(table) if task == "seq-cls" else 0)


@lru_cache(maxsize=4)
def client_splits(
    cfg: DataConfig, task: str, seed: int, partition_id: int, num_partitions: int
) -> ClientSplits:
    shared = server_splits(cfg, task, seed)
    part = tables.partition(shared.pool, cfg, num_partitions, partition_id, seed)
    train, test = tables.local_split(part, cfg.client_test_fraction, seed)
    return ClientSplits(train, test, shared.num_labels)


def _node_federation_server_splits(cfg: DataConfig, task: str, seed: int) -> ServerSplits:
    """The server of a node-data federation holds no pool; it tests on its own held-out file (its
    ``data.validation-fraction`` split off as validation), or on nothing: then it reports no test metrics."""
    if cfg.server_test:
        held_out = tables.load_file_table(cfg.server_test, "data.server-test", cfg, task, seed)
        test, validation = tables.validation_split(held_out, cfg, seed)
    else:
        test = validation = tables.empty_table(cfg, task)
    num_labels = len(tables.configured_labels(cfg)) if task == "seq-cls" else 0
    return ServerSplits(tables.empty_table(cfg, task), test, validation, num_labels)


@lru_cache(maxsize=2)
def node_splits(cfg: DataConfig, task: str, seed: int, path: str) -> ClientSplits:
    """A node's own file split into its training rows and its local test rows."""
    key = "node config data-path"
    table = tables.load_file_table(path, key, cfg, task, seed, source=f"the file of this node's {key}")
    train, test = tables.local_split(table, cfg.client_test_fraction, seed)
    return ClientSplits(train, test, len(tables.configured_labels(cfg)) if task == "seq-cls" else 0)
