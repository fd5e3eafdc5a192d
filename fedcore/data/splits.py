"""The run's data splits as each side sees them: the server's test set, each client's partition.

Server and clients derive the same splits independently from the run config and seed, so no data
crosses the wire. Results are cached per process: in simulation a Ray actor serves many rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from datasets import Dataset

from fedcore.config import DataConfig
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
