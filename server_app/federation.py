"""The federation loop: plan, send, collect, validate, aggregate layer-wise, evaluate, record, checkpoint.

Built directly on Flower's Message API (the grid's push and pull) because every client gets its own
plan and payload and replies carry different parameter subsets, which Flower's stock strategies
do not aggregate.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.aggregate import ClientUpdate, UpdateRejected, aggregate_layerwise, validate_update
from fedcore.core.files import write_json_atomic
from fedcore.core.layers import LayerMap
from fedcore.core.limits import check_record, clip_text
from fedcore.core.plan import LayerPlan
from fedcore.core.reply_schema import SchemaError, check_train_metrics
from fedcore.core.robust import cap_weights, clip_updates, stated_weight
from fedcore.core.seeding import derive_seed
from fedcore.core.wire import dict_to_config, received_state, state_to_arrays
from fedcore.data.batching import Batch, make_batches
from fedcore.data.splits import server_splits
from fedcore.data.tables import label_names
from fedcore.methods.base import ClientInfo, ClientPlan, ClientResult, Planner
from fedcore.methods.registry import make_planner
from fedcore.model import build_model, load_tunable_state, tunable_state
from fedcore.training.evaluate import evaluate
from server_app import console
from server_app.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from server_app.model_export import base_reference, make_portable, model_card
from server_app.nodes import query_clients, wait_for_nodes
from server_app.progress import Progress
from server_app.run_log import RunLog, new_run_dir
from server_app.run_report import write_run_report
from server_app.samples import generate_samples
from server_app.tensorboard import open_tensorboard

#: the shortest wait for the clients' info replies at start-up, whatever round.timeout says
QUERY_TIMEOUT_S = 120.0


@dataclass
class ClientOutcome:
    row: dict[str, Any]
    update: ClientUpdate | None


@dataclass
class ServerState:
    """What the server holds between rounds (and what a checkpoint restores)."""

    cfg: RunConfig
    model: nn.Module
    layer_map: LayerMap
    global_state: dict[str, torch.Tensor]
    planner: Planner
    eval_batches: list[Batch]
    test: Dataset
    #: the server's validation split (empty without data.validation-fraction), reported as val_* metrics
    validation_batches: list[Batch] = field(default_factory=list)
    first_round: int = 1
    best_accuracy: float | None = None
    elapsed_before_s: float = 0.0
    shapes: dict[str, torch.Size] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    #: the run's identity, which a resume keeps: clients store their personal layers by it
    run_name: str = ""
    #: a simulation (Flower's in-memory grid): clients emulate device profiles instead of measuring
    simulated: bool = True
    #: partition -> node id holding it in this run, which a resume keeps (nodes.assign_partitions)
    holders: dict[int, int] = field(default_factory=dict)


def sample_clients(clients: list[ClientInfo], cfg: RunConfig, round_number: int) -> list[ClientInfo]:
    if not cfg.clients.per_round or cfg.clients.per_round >= len(clients):
        return clients
    rng = random.Random(derive_seed(cfg.seed, round_number))
    return sorted(rng.sample(clients, cfg.clients.per_round), key=lambda c: c.partition_id)


def train_message(
    client: ClientInfo, planned: ClientPlan, cfg: RunConfig, run_name: str, simulated: bool
) -> Message:
    content = RecordDict(
        {
            wire.PLAN: dict_to_config(planned.plan.to_dict()),
            wire.RUN_CONFIG: dict_to_config(cfg.to_flat()),
            wire.RUN: dict_to_config({wire.RUN_NAME: run_name, wire.SIMULATED: simulated}),
            wire.GLOBAL: state_to_arrays(planned.payload, cfg.round.wire_dtype),
        }
    )
    return Message(content, dst_node_id=client.node_id, message_type=MessageType.TRAIN)


def collect_reply(
    reply: Message,
    client: ClientInfo,
    plan: LayerPlan,
    expected: dict[str, torch.Size],
    layer_map: LayerMap,
    cfg: RunConfig,
) -> ClientOutcome:
    """Turn one reply into a metrics row and, if it is sound, an update to aggregate.

    The reply's numbers enter the row only once they pass the schema, and never over the server's own
    fields (who answered, the status, the bytes measured here); its tensors are checked by what they
    declare (names, shapes, bytes) before any is decoded, and again as decoded before anything converts
    them. Every text the client controls is cut to limits.text-chars.
    """
    row: dict[str, Any] = {"node_id": client.node_id, "partition_id": client.partition_id}
    row["plan"] = plan.as_log()
    limits = cfg.limits
    if reply.has_error():
        reason = clip_text(str(reply.error.reason), limits.text_chars)
        return ClientOutcome({**row, "status": "failed", "reason": reason}, None)
    try:
        metric_record = reply.content.metric_records[wire.TRAIN_METRICS]
        if len(metric_record) > limits.list_items:
            raise SchemaError(f"{len(metric_record)} metrics exceed limits.list-items={limits.list_items}")
        metrics = check_train_metrics(dict(metric_record), probe=plan.probe_examples > 0)
        record = reply.content.array_records[wire.UPDATE]
        wanted = set(plan.train_groups)
        plan_expected = {n: s for n, s in expected.items() if layer_map.group_of(n) in wanted}
        check_record(record, plan_expected, limits.reply_mb * 1e6, limits.list_items)
        update = received_state(record)
        validate_update(update, plan_expected, layer_map.group_of, wire.wire_dtype_of(cfg.round.wire_dtype))
    except (SchemaError, UpdateRejected) as exc:
        return ClientOutcome(
            {**row, "status": "rejected", "reason": clip_text(str(exc), limits.text_chars)}, None
        )
    except (KeyError, TypeError, ValueError) as exc:
        reason = clip_text(f"malformed reply: {exc!r}", limits.text_chars)
        return ClientOutcome({**row, "status": "rejected", "reason": reason}, None)
    row = {**metrics, **row, wire.BYTES_UP: record.count_bytes(), "status": "ok", "reason": None}
    weight = stated_weight(metrics[wire.EXAMPLES], client.num_examples)
    tensors = {name: tensor.float() for name, tensor in update.items()}
    return ClientOutcome(row, ClientUpdate(client.node_id, weight, tensors, client.examples_checked))


def bound_and_aggregate(state: ServerState, outcomes: list[ClientOutcome]) -> None:
    """Bound every sound reply's influence (weight cap, norm clipping), record it in the client's row,
    and aggregate once there are clients.min sound replies."""
    cfg = state.cfg
    sound = [o for o in outcomes if o.update is not None]
    updates = cap_weights([o.update for o in sound], cfg.round.weight_cap)
    updates, scales = clip_updates(updates, state.layer_map.group_of, cfg.round.clip_factor)
    for outcome, update, scale in zip(sound, updates, scales, strict=True):
        outcome.row.update(weight=update.weight, clip_scale=scale)
    if len(updates) >= cfg.clients.min:
        state.global_state = aggregate_layerwise(state.global_state, updates, cfg.round.aggregator)
        load_tunable_state(state.model, state.global_state)


def prepare(cfg: RunConfig) -> tuple[ServerState, RunLog, PreTrainedTokenizerBase]:
    """Build the global model, evaluation data and planner; restore a checkpoint if resuming."""
    task = cfg.model.task
    splits = server_splits(cfg.data, task, cfg.seed)
    model, tokenizer = build_model(cfg, splits.num_labels)
    layer_map = LayerMap(model)
    global_state = tunable_state(model)
    test = splits.test
    if cfg.eval.max_examples:
        test = test.select(range(min(cfg.eval.max_examples, len(test))))
    state = ServerState(
        cfg=cfg,
        model=model,
        layer_map=layer_map,
        global_state=global_state,
        planner=make_planner(cfg, model, tokenizer),
        eval_batches=make_batches(test, tokenizer, task, cfg.model.max_length, cfg.eval.batch_size),
        test=test,
        validation_batches=make_batches(
            splits.validation, tokenizer, task, cfg.model.max_length, cfg.eval.batch_size
        )
        if len(splits.validation)
        else [],
        shapes={name: tensor.shape for name, tensor in global_state.items()},
    )
    if not cfg.resume_from:
        return state, RunLog(new_run_dir(cfg.output.dir, cfg.method), cfg.to_flat()), tokenizer
    run_dir = Path(cfg.resume_from).expanduser().resolve()
    checkpoint = load_checkpoint(run_dir)
    check_compatible(checkpoint, cfg, global_state)
    state.global_state = {name: checkpoint.global_state[name] for name in global_state}
    load_tunable_state(model, state.global_state)
    try:
        state.planner.load_state_dict(checkpoint.planner_state)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(
            f"resume-from: the planner state in {run_dir / CHECKPOINT_DIR} does not fit method={cfg.method} "
            f"({exc!r}); resume with the settings it was made with"
        ) from None
    state.first_round = checkpoint.round + 1
    state.best_accuracy = checkpoint.best_accuracy
    state.elapsed_before_s = checkpoint.elapsed_s
    state.holders = checkpoint.holders
    log = RunLog(run_dir, cfg.to_flat())
    log.truncate_after(checkpoint.round)
    return state, log, tokenizer


def run_round(
    grid: Grid, state: ServerState, clients: list[ClientInfo], round_number: int
) -> list[ClientOutcome]:
    """One round: plans out, replies in, layer-wise aggregate of the sound replies."""
    cfg = state.cfg
    chosen = sample_clients(clients, cfg, round_number)
    planned = state.planner.plan(round_number, chosen, state.global_state)
    messages = [train_message(c, planned[c.node_id], cfg, state.run_name, state.simulated) for c in chosen]
    plans = {node_id: p.plan for node_id, p in planned.items()}
    del planned  # each payload now lives in its message only
    bytes_down = {
        m.metadata.dst_node_id: m.content.array_records[wire.GLOBAL].count_bytes() for m in messages
    }
    label = f"round {round_number}/{cfg.rounds}"
    collected = state.progress.collect(grid, messages, cfg.round.timeout, label, cfg.limits.text_chars)
    outcomes = []
    for client in chosen:
        if client.node_id in collected.replies:
            outcome = collect_reply(
                collected.replies[client.node_id],
                client,
                plans[client.node_id],
                state.shapes,
                state.layer_map,
                cfg,
            )
        elif client.node_id in collected.undecodable:
            row = {"node_id": client.node_id, "partition_id": client.partition_id, "status": "rejected"}
            outcome = ClientOutcome({**row, "reason": collected.undecodable[client.node_id]}, None)
        else:
            reason = f"no reply within round.timeout={cfg.round.timeout:g} s"
            row = {"node_id": client.node_id, "partition_id": client.partition_id, "status": "timeout"}
            outcome = ClientOutcome({**row, "reason": reason}, None)
        outcome.row.update(kind="client", round=round_number)
        outcome.row[wire.BYTES_DOWN] = bytes_down[client.node_id]
        outcomes.append(outcome)
    bound_and_aggregate(state, outcomes)
    state.planner.observe(
        round_number,
        [ClientResult(o.row["partition_id"], o.update is not None, _numbers(o.row)) for o in outcomes],
    )
    return outcomes


def evaluate_server(state: ServerState) -> dict[str, Any]:
    """The global model on the test split, and on the validation split (keys prefixed ``val_``) if any.

    No test rows, no test metrics: the server of a node-data federation without data.server-test.
    """
    task = state.cfg.model.task
    metrics = evaluate(state.model, state.eval_batches, task) if state.eval_batches else {}
    if state.validation_batches:
        validation = evaluate(state.model, state.validation_batches, task)
        metrics.update({f"val_{key}": value for key, value in validation.items()})
    return metrics


def global_row(state: ServerState, round_number: int, outcomes: list[ClientOutcome]) -> dict[str, Any]:
    ok_rows = [o.row for o in outcomes if o.update is not None]
    return {
        "kind": "global",
        "round": round_number,
        **evaluate_server(state),
        "aggregated": len(ok_rows) >= state.cfg.clients.min,
        wire.BYTES_DOWN: sum(o.row.get(wire.BYTES_DOWN, 0) for o in outcomes),
        wire.BYTES_UP: sum(r.get(wire.BYTES_UP, 0) for r in ok_rows),
        "max_client_peak_rss_mb": max((r[wire.PEAK_RSS_MB] for r in ok_rows), default=None),
        "clients_ok": len(ok_rows),
        "clients_failed": len(outcomes) - len(ok_rows),
        "planner": state.planner.state_dict(),
    }


def run_federation(grid: Grid, cfg: RunConfig) -> Path:
    """Run (or continue) one federation; returns the run directory."""
    state, log, tokenizer = prepare(cfg)
    state.run_name = log.run_id
    state.simulated = isinstance(grid, InMemoryGrid)
    board = open_tensorboard(cfg.output.tensorboard, log.dir)
    task = cfg.model.task
    print(f"fedlayer: method={cfg.method} model={cfg.model.name} run dir {log.dir}", flush=True)
    print(console.header(task), flush=True)
    last = log.last_global_row()  # a resumed run that only needs finishing reports its final row
    if state.first_round == 1:
        began = time.perf_counter()
        last = {"kind": "global", "round": 0, **evaluate_server(state)}
        last.update(elapsed_s=0.0, round_wall_time_s=time.perf_counter() - began, clients_ok=0)
        state.best_accuracy = last.get("accuracy")
        log.row(last)
        if board:
            board.round(last)
        print(console.line(last, task), flush=True)

    startup_began = time.perf_counter()
    node_ids = wait_for_nodes(grid, cfg.clients.min, cfg.round.timeout)
    # Start-up answers come from freshly started client processes: allow at least QUERY_TIMEOUT_S.
    timeout = max(cfg.round.timeout, QUERY_TIMEOUT_S)
    clients, left_out = query_clients(grid, node_ids, cfg, timeout, state.holders, state.simulated)
    state.holders = {**state.holders, **{c.partition_id: c.node_id for c in clients}}
    for node_id, (status, reason) in left_out.items():
        log.row({"kind": "node", "node_id": node_id, "status": status, "reason": reason})
        print(f"fedlayer: node {node_id} {status}: {reason}", flush=True)
    if len(clients) < cfg.clients.min:
        raise RuntimeError(f"only {len(clients)} client(s) answered; clients.min={cfg.clients.min}")
    startup_s = time.perf_counter() - startup_began
    print(f"fedlayer: {len(clients)} of {len(node_ids)} node(s) ready in {startup_s:.1f} s", flush=True)

    began = time.perf_counter() - state.elapsed_before_s
    for round_number in range(state.first_round, cfg.rounds + 1):
        round_began = time.perf_counter()
        outcomes = run_round(grid, state, clients, round_number)
        last = global_row(state, round_number, outcomes)
        last.update(
            elapsed_s=time.perf_counter() - began, round_wall_time_s=time.perf_counter() - round_began
        )
        for outcome in outcomes:
            log.row(outcome.row)
        log.row(last)
        if board:
            board.round(last)
        print(console.line(last, task), flush=True)
        if last.get("accuracy") is not None:
            state.best_accuracy = max(state.best_accuracy or 0.0, last["accuracy"])
        save_checkpoint(
            log.dir,
            Checkpoint(
                round=round_number,
                global_state=state.global_state,
                planner_state=state.planner.state_dict(),
                best_accuracy=state.best_accuracy,
                elapsed_s=last["elapsed_s"],
                config=cfg.to_flat(),
                holders=state.holders,
            ),
        )

    if cfg.output.save_model:
        reference = base_reference(cfg.model.name)
        labels = label_names(state.test)
        make_portable(state.model, reference, labels)
        log.save_model(state.model, tokenizer, model_card(cfg, reference, labels, last))
    if task == "causal-lm":
        write_json_atomic(log.dir / "samples.json", generate_samples(state.model, tokenizer, state.test))
    log.summary(
        {
            "method": cfg.method,
            "rounds_completed": cfg.rounds,
            "final": last,
            "best_accuracy": state.best_accuracy,
            "total_wall_time_s": time.perf_counter() - began,
            "startup_s": startup_s,
            "nodes_ready": len(clients),
            "run_dir": str(log.dir),
        }
    )
    log.close()
    if board:
        board.close()
    write_run_report(log.dir)
    print(f"fedlayer: finished; outputs and report.md in {log.dir}", flush=True)
    return log.dir


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
