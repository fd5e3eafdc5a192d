"""The generic client: execute one LayerPlan on this node's data and produce the reply content.

Every method (baselines, DropPEFT, LEFF) arrives here as a plan; nothing in this file knows which
method is running.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore import protocol
from fedcore.batching import make_batches
from fedcore.config import RunConfig
from fedcore.model import build_model, load_tunable_state
from fedcore.plan import LayerPlan
from fedcore.records import arrays_to_state, config_to_dict, state_to_arrays
from fedcore.splits import ClientSplits, client_splits
from fedcore.train import train_plan

_model_cache: dict[tuple, tuple[nn.Module, PreTrainedTokenizerBase]] = {}


def node_partition(cfg: RunConfig, node_config: dict[str, Any]) -> tuple[int, int]:
    """(partition id, number of partitions) from the SuperNode's node config."""
    try:
        partition_id = int(node_config[protocol.NODE_PARTITION_ID])
        num_partitions = cfg.clients.num_partitions or int(node_config[protocol.NODE_NUM_PARTITIONS])
    except KeyError as missing:
        raise ValueError(
            f"node config lacks {missing}: start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        ) from None
    return partition_id, num_partitions


def local_data(cfg: RunConfig, node_config: dict[str, Any]) -> tuple[int, ClientSplits]:
    partition_id, num_partitions = node_partition(cfg, node_config)
    splits = client_splits(cfg.data, cfg.model.task, cfg.seed, partition_id, num_partitions)
    return partition_id, splits


def cached_model(cfg: RunConfig, num_labels: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Reuse the built model across rounds within one process (a Ray actor serves many rounds).

    Safe because every round overwrites all tunable parameters with the server's values and nothing
    else is ever modified.
    """
    key = (cfg.model, cfg.tuning, cfg.tuning_mode, cfg.seed, num_labels)
    if key not in _model_cache:
        _model_cache.clear()
        _model_cache[key] = build_model(cfg, num_labels)
    return _model_cache[key]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def node_info(node_config: dict[str, Any], cfg: RunConfig) -> RecordDict:
    """Answer the server's info query: who this client is and how much data it holds."""
    partition_id, splits = local_data(cfg, node_config)
    info = {k: v for k, v in node_config.items() if isinstance(v, (int, float, str, bool))}
    info.update({protocol.NODE_PARTITION_ID: partition_id, "num-examples": len(splits.train)})
    return RecordDict({protocol.NODE_INFO: ConfigRecord(info)})


def execute_train(content: RecordDict, node_config: dict[str, Any]) -> RecordDict:
    began = time.perf_counter()
    cfg = RunConfig.from_flat(config_to_dict(content.config_records[protocol.RUN_CONFIG]))
    plan = LayerPlan.from_dict(config_to_dict(content.config_records[protocol.PLAN]))
    global_arrays = content.array_records[protocol.GLOBAL]
    _, splits = local_data(cfg, node_config)
    model, tokenizer = cached_model(cfg, splits.num_labels)
    load_tunable_state(model, arrays_to_state(global_arrays))
    batches = make_batches(
        splits.train, tokenizer, cfg.model.task, cfg.model.max_length, cfg.train.batch_size, plan.seed
    )
    outcome = train_plan(
        model,
        batches,
        plan,
        weight_decay=cfg.train.weight_decay,
        warmup_fraction=cfg.train.warmup_fraction,
        clip_norm=cfg.train.clip_norm,
        device=device(),
    )
    update = state_to_arrays(outcome.update)
    metrics = dict(outcome.metrics)
    metrics.update(
        examples=len(splits.train),
        bytes_down=global_arrays.count_bytes(),
        bytes_up=update.count_bytes(),
        wall_time_s=time.perf_counter() - began,
    )
    return RecordDict({protocol.UPDATE: update, protocol.TRAIN_METRICS: MetricRecord(metrics)})
