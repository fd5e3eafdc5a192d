"""The generic client: execute one LayerPlan on this node's data and produce the reply content.

Every method (baselines, DropPEFT, LEFF) arrives here as a plan; nothing in this file knows which method
is running. The plan says what to train and how (steps, learning rate, batch size...); the run config
only which model, data and device profiles the run uses. ``execute_train`` reads top to bottom as the
round's steps, one function each. Personal layers (PTLS) live on the node's disk between rounds, under
global names (personal_store).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from datasets import Dataset
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn
from transformers import PreTrainedTokenizerBase

from client_app.cpu_share import use_cpu_share
from client_app.info import simulated
from client_app.personal_store import PersonalStore
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.devices import profile_for
from fedcore.core.layers import LayerMap, block_of_group
from fedcore.core.plan import LayerPlan
from fedcore.core.wire import config_to_dict, received_state, state_to_arrays
from fedcore.data.batching import Batch, make_batches
from fedcore.data.sources import data_source
from fedcore.data.tables import probe_split
from fedcore.mechanisms.frozen_precision import hold_frozen_blocks
from fedcore.mechanisms.partial_model import Layout, build_layout_model
from fedcore.mechanisms.personal_layers import keep_personal, next_personal_state, shared_update
from fedcore.model import build_model, load_tokenizer, load_tunable_state
from fedcore.training.evaluate import evaluate
from fedcore.training.train import TrainOutcome, train_plan


@dataclasses.dataclass(frozen=True)
class ClientModel:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    layer_map: LayerMap


_model_cache: dict[tuple, ClientModel] = {}


def cached_model(cfg: RunConfig, num_labels: int, depth: int, frozen_dtype: str = "") -> ClientModel:
    """The full model (depth 0) or a LEFF layout of ``depth`` blocks (its blocks created in
    ``frozen_dtype`` when the plan names one), reused across rounds in one process.

    Reuse is safe because every round overwrites all tunable parameters with the server's values and
    nothing else is ever modified (a Ray actor serves many rounds; a deployed ClientApp only one).
    """
    key = (cfg.model, cfg.tuning, cfg.tuning_mode, cfg.seed, num_labels, depth, frozen_dtype)
    if key not in _model_cache:
        _model_cache.clear()
        if depth:
            model = build_layout_model(cfg, num_labels, depth, frozen_dtype)
            tokenizer = load_tokenizer(cfg.model)
        else:
            model, tokenizer = build_model(cfg, num_labels)
        _model_cache[key] = ClientModel(model, tokenizer, LayerMap(model))
    return _model_cache[key]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def execute_train(content: RecordDict, node_config: dict[str, Any]) -> RecordDict:
    """One round of one client, step by step."""
    began = time.perf_counter()
    use_cpu_share()
    cfg, plan, arrays, run_name = decode(content)
    source = data_source(cfg, node_config)
    splits = source.splits(cfg)
    store = PersonalStore.for_node(node_config, run_name, source.client_key)
    device_name, slowdown = emulated_device(content, source.partition_id, cfg, node_config)
    client = cached_model(cfg, splits.num_labels, len(plan.block_sources), plan.frozen_dtype)
    # The client model's own (local) names differ from the global ones only for LEFF layouts; the layout
    # is the one place that switches between them.
    layout = Layout.for_plan(client.layer_map, plan.block_sources)
    local_plan = dataclasses.replace(plan, train_groups=layout.local_groups(plan.train_groups))
    hold_in_plan_precision(client, local_plan)
    bytes_down = arrays.count_bytes()
    received = load_global(client, arrays, local_plan)
    stored, personal = overlay_personal(client, layout, store.before(plan.round))

    train_rows, probe_rows = probe_split(splits.train, plan.probe_examples)
    metrics = evaluate_locally(client, cfg, plan, splits.test if len(splits.test) else train_rows)
    probe = batches_of(client, cfg, probe_rows, plan.eval_batch_size)
    if probe:
        metrics[wire.PROBE_LOSS_BEFORE] = probe_loss(client, cfg, probe)
    outcome = train(client, cfg, local_plan, train_rows, received, personal)
    if probe:
        metrics[wire.PROBE_LOSS_AFTER] = probe_loss(client, cfg, probe)
    keep, held = select_personal(client, layout, plan, outcome, stored, store)
    update = build_upload(client, layout, plan, outcome, keep, personal, received)
    metrics.update(outcome.metrics)
    metrics.update(
        {
            wire.EXAMPLES: len(train_rows),
            wire.PERSONAL_BLOCKS: len(keep),
            wire.MODEL_BLOCKS: client.layer_map.num_blocks,
            wire.DEVICE_TIME_S: outcome.metrics[wire.COMPUTE_TIME_S] * slowdown,
            wire.BYTES_DOWN: bytes_down,
            wire.BYTES_UP: update.count_bytes(),
            wire.WALL_TIME_S: time.perf_counter() - began,
        }
    )
    return reply(update, metrics, device_name, held, source.partition_id)


def emulated_device(
    content: RecordDict, partition_id: int | None, cfg: RunConfig, node_config: dict[str, Any]
) -> tuple[str, float]:
    """(device name, factor from compute time to device time): in simulation the node's profile and
    1 / its speed; in deployment the real time (factor 1) of the named or measured device."""
    if simulated(content):
        profile = profile_for(partition_id, cfg.devices.profiles, node_config)
        return profile.name, 1.0 / profile.speed
    return str(node_config.get("device", "measured")), 1.0


def decode(content: RecordDict) -> tuple[RunConfig, LayerPlan, ArrayRecord, str]:
    """The run config, this client's plan, the tensors sent with it and the run's name."""
    cfg = RunConfig.from_flat(config_to_dict(content.config_records[wire.RUN_CONFIG]))
    plan = LayerPlan.from_dict(config_to_dict(content.config_records[wire.PLAN]))
    run_name = str(content.config_records[wire.RUN][wire.RUN_NAME])
    return cfg, plan, content.array_records[wire.GLOBAL], run_name


def hold_in_plan_precision(client: ClientModel, local_plan: LayerPlan) -> None:
    """Blocks the plan trains in float32, the others in the plan's ``frozen_dtype`` (when it names one)."""
    if local_plan.frozen_dtype:
        blocks = (block_of_group(group) for group in local_plan.train_groups)
        trained = {block for block in blocks if block is not None}
        hold_frozen_blocks(client.model, trained, local_plan.frozen_dtype, torch.float32)


def load_global(client: ClientModel, arrays: ArrayRecord, local_plan: LayerPlan) -> dict[str, torch.Tensor]:
    """Load the server's values into the model; returns those of the trained groups in float32 (the
    update's start).

    The payload is released tensor by tensor while converting and kept in the precision it travelled in
    until each tensor is copied into its parameter (at that parameter's dtype), so frozen tensors then live
    only in the model: each tensor is held once.
    """
    received = received_state(arrays, release=True)
    load_tunable_state(client.model, received)
    trained = set(local_plan.train_groups)
    return {n: t.float() for n, t in received.items() if client.layer_map.group_of(n) in trained}


def overlay_personal(
    client: ClientModel, layout: Layout, stored: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Put this client's personal values over the global ones; returns them (global names, local names)."""
    personal = layout.to_local(stored)
    load_tunable_state(client.model, personal)
    return stored, personal


def batches_of(
    client: ClientModel, cfg: RunConfig, table: Dataset, batch_size: int, shuffle_seed: int | None = None
) -> list[Batch]:
    task, max_length = cfg.model.task, cfg.model.max_length
    return make_batches(table, client.tokenizer, task, max_length, batch_size, shuffle_seed)


def evaluate_locally(
    client: ClientModel, cfg: RunConfig, plan: LayerPlan, held_out: Dataset
) -> dict[str, float]:
    """Before training: the personalised model on local held-out data (when the plan asks for it)."""
    if not plan.evaluate_local:
        return {}
    count = min(len(held_out), plan.eval_examples or len(held_out))
    local_test = batches_of(client, cfg, held_out.select(range(count)), plan.eval_batch_size)
    local = evaluate(client.model, local_test, cfg.model.task, device())
    return {wire.PERSONAL_PREFIX + k: v for k, v in local.items()}


def probe_loss(client: ClientModel, cfg: RunConfig, probe: list[Batch]) -> float:
    """The full model's loss on the probe rows: DropPEFT's bandit rewards its drop over the round."""
    return evaluate(client.model, probe, cfg.model.task, device())["loss"]


def train(
    client: ClientModel,
    cfg: RunConfig,
    local_plan: LayerPlan,
    train_table: Dataset,
    received: dict[str, torch.Tensor],
    personal: dict[str, torch.Tensor],
) -> TrainOutcome:
    """Run the local loop on the plan's groups (layer dropout inside, when the plan has drop rates)."""
    return train_plan(
        client.model,
        batches_of(client, cfg, train_table, local_plan.batch_size, local_plan.seed),
        local_plan,
        weight_decay=local_plan.weight_decay,
        warmup_fraction=local_plan.warmup_fraction,
        clip_norm=local_plan.clip_norm,
        precision=local_plan.precision,
        start=received | personal,  # the values the model was just loaded with: no extra copy
        device=device(),
        layer_map=client.layer_map,
    )


def select_personal(
    client: ClientModel,
    layout: Layout,
    plan: LayerPlan,
    outcome: TrainOutcome,
    stored: dict[str, torch.Tensor],
    store: PersonalStore,
) -> tuple[set[str], list[str]]:
    """Keep the most-updated trained blocks personal (on the node's disk, global names).

    Returns the groups kept this round (local names) and every group the client now holds personal.
    """
    group_of = client.layer_map.group_of
    keep, kept = keep_personal(client.model, outcome.update, group_of, plan.personal_fraction)
    personal_state = next_personal_state(stored, layout.to_global(kept), plan.train_groups, group_of)
    if personal_state or stored:
        store.save(plan.round, personal_state)
    return keep, sorted({group_of(name) for name in personal_state})


def build_upload(
    client: ClientModel,
    layout: Layout,
    plan: LayerPlan,
    outcome: TrainOutcome,
    keep: set[str],
    personal: dict[str, torch.Tensor],
    received: dict[str, torch.Tensor],
) -> ArrayRecord:
    """The update of the shared trained groups, under global names, in the wire precision."""
    upload = shared_update(outcome.update, keep, client.layer_map.group_of, personal, received)
    return state_to_arrays(layout.to_global(upload), plan.wire_dtype)


def reply(
    update: ArrayRecord,
    metrics: dict[str, float],
    device_name: str,
    personal_groups: list[str],
    partition_id: int | None,
) -> RecordDict:
    """The reply content: the update, the numbers, and the facts that are not numbers (among them the
    partition the node trained on, which the server holds it to from round to round)."""
    report: dict[str, Any] = {
        wire.REPORT_DEVICE: device_name,
        wire.REPORT_PERSONAL_GROUPS: personal_groups or [""],
    }
    if partition_id is not None:
        report[wire.NODE_PARTITION_ID] = partition_id
    return RecordDict(
        {
            wire.UPDATE: update,
            wire.TRAIN_METRICS: MetricRecord(metrics),
            wire.TRAIN_REPORT: ConfigRecord(report),
        }
    )
