"""The generic client: execute one LayerPlan on this node's data and produce the reply content.

Every method (baselines, DropPEFT, LEFF) arrives here as a plan; nothing in this file knows which
method is running. Personal layers (PTLS) live in the node's persistent state between rounds.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core import protocol
from fedcore.core.devices import profile_for
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.core.wire import arrays_to_state, config_to_dict, state_to_arrays
from fedcore.data.batching import make_batches
from fedcore.data.splits import ClientSplits, client_splits
from fedcore.mechanisms.partial_model import build_layout_model, local_groups, to_global, to_local
from fedcore.mechanisms.personal_layers import choose_personal_groups, group_update_norms
from fedcore.model import build_model, load_tokenizer, load_tunable_state
from fedcore.training.evaluate import evaluate
from fedcore.training.train import train_plan

#: key of the personal parameters in the node's persistent state (context.state)
PERSONAL_STATE = "fedlayer.personal"

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


def cached_model(cfg: RunConfig, num_labels: int, depth: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The full model (depth 0) or a LEFF layout of ``depth`` blocks, reused across rounds in one process.

    Reuse is safe because every round overwrites all tunable parameters with the server's values and
    nothing else is ever modified (a Ray actor serves many rounds; a deployed ClientApp only one).
    """
    key = (cfg.model, cfg.tuning, cfg.tuning_mode, cfg.seed, num_labels, depth)
    if key not in _model_cache:
        _model_cache.clear()
        if depth:
            _model_cache[key] = (build_layout_model(cfg, num_labels, depth), load_tokenizer(cfg.model))
        else:
            _model_cache[key] = build_model(cfg, num_labels)
    return _model_cache[key]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def node_info(node_config: dict[str, Any], cfg: RunConfig) -> RecordDict:
    """Answer the server's info query: who this client is, how much data and what device it has."""
    partition_id, splits = local_data(cfg, node_config)
    profile = profile_for(partition_id, cfg.devices.profiles, node_config)
    info = {k: v for k, v in node_config.items() if isinstance(v, (int, float, str, bool))}
    info.update(profile.as_config())
    info.update({protocol.NODE_PARTITION_ID: partition_id, "num-examples": len(splits.train)})
    return RecordDict({protocol.NODE_INFO: ConfigRecord(info)})


def execute_train(content: RecordDict, node_config: dict[str, Any], state: RecordDict) -> RecordDict:
    began = time.perf_counter()
    cfg = RunConfig.from_flat(config_to_dict(content.config_records[protocol.RUN_CONFIG]))
    plan = LayerPlan.from_dict(config_to_dict(content.config_records[protocol.PLAN]))
    global_arrays = content.array_records[protocol.GLOBAL]
    partition_id, splits = local_data(cfg, node_config)
    profile = profile_for(partition_id, cfg.devices.profiles, node_config)
    model, tokenizer = cached_model(cfg, splits.num_labels, len(plan.block_sources))
    layer_map = LayerMap(model)
    # Below, tensors carry the client model's own (local) names; personal layers are stored and uploads
    # are sent under global names. The two differ only for LEFF layouts.
    sources = plan.block_sources or tuple(range(layer_map.num_blocks))
    bytes_down = global_arrays.count_bytes()
    received = arrays_to_state(global_arrays, release=True)
    stored = arrays_to_state(state.array_records[PERSONAL_STATE]) if PERSONAL_STATE in state else {}
    personal = to_local(stored, layer_map, sources)
    load_tunable_state(model, received)
    load_tunable_state(model, personal)
    local_plan = dataclasses.replace(plan, train_groups=local_groups(plan.train_groups, sources))
    # Frozen tensors now live only in the model; trained ones are kept as the start of the update.
    received = {n: t for n, t in received.items() if layer_map.group_of(n) in local_plan.train_groups}

    def batches(table: Any, shuffle_seed: int | None, batch_size: int) -> list:
        return make_batches(table, tokenizer, cfg.model.task, cfg.model.max_length, batch_size, shuffle_seed)

    metrics: dict[str, float] = {}
    held_out = splits.test if len(splits.test) else splits.train
    if plan.evaluate_local:
        local_test = held_out.select(range(min(len(held_out), cfg.eval.client_examples or len(held_out))))
        local = evaluate(model, batches(local_test, None, cfg.eval.batch_size), cfg.model.task, device())
        metrics.update({f"personal_{k}": v for k, v in local.items()})
    probe_table = held_out.select(range(min(len(held_out), plan.probe_examples)))
    probe = batches(probe_table, None, cfg.eval.batch_size)
    if probe:
        metrics["probe_loss_before"] = evaluate(model, probe, cfg.model.task, device())["loss"]

    outcome = train_plan(
        model,
        batches(splits.train, plan.seed, cfg.train.batch_size),
        local_plan,
        weight_decay=cfg.train.weight_decay,
        warmup_fraction=cfg.train.warmup_fraction,
        clip_norm=cfg.train.clip_norm,
        precision=cfg.train.precision,
        start=received | personal,  # the values the model was just loaded with: no extra copy
        device=device(),
    )
    if probe:
        metrics["probe_loss_after"] = evaluate(model, probe, cfg.model.task, device())["loss"]

    norms = group_update_norms(outcome.update, layer_map.group_of)
    keep = set(choose_personal_groups(norms, plan.personal_fraction))
    params = dict(model.named_parameters())
    new_personal = {
        n: params[n].detach().cpu().clone() for n in outcome.update if layer_map.group_of(n) in keep
    }
    # Blocks trained this round are personal only if kept now; untrained ones keep their personal value.
    global_personal = to_global(new_personal, layer_map, sources)
    carried = {n: t for n, t in stored.items() if layer_map.group_of(n) not in plan.train_groups}
    state[PERSONAL_STATE] = ArrayRecord({**carried, **global_personal})
    # Uploads are relative to the global value received, also where a personal value was trained from.
    upload = {
        name: delta + (personal[name] - received[name] if name in personal else 0.0)
        for name, delta in outcome.update.items()
        if layer_map.group_of(name) not in keep
    }
    update = state_to_arrays(to_global(upload, layer_map, sources), cfg.round.wire_dtype)
    metrics.update(outcome.metrics)
    metrics.update(
        examples=len(splits.train),
        personal_blocks=len(keep),
        model_blocks=layer_map.num_blocks,
        device_time_s=outcome.metrics["compute_time_s"] / profile.speed,
        bytes_down=bytes_down,
        bytes_up=update.count_bytes(),
        wall_time_s=time.perf_counter() - began,
    )
    personal_groups = sorted({layer_map.group_of(name) for name in {**carried, **global_personal}})
    report = {"device": profile.name, "personal-groups": personal_groups or [""]}
    return RecordDict(
        {
            protocol.UPDATE: update,
            protocol.TRAIN_METRICS: MetricRecord(metrics),
            protocol.TRAIN_REPORT: ConfigRecord(report),
        }
    )
