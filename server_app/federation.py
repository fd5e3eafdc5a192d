"""The federation loop: prepare, then per round plan, send, collect, aggregate (through the run's
LayerwiseStrategy), evaluate, record, save the round's model if due (``output.save-every``) and checkpoint.

The strategy (``server_app.strategy``) owns a round's planning, reply checks, bounds and layer-wise
aggregation; this loop adds what a product run needs around it: live progress while replies come in
(each reply pulled on its own, so one undecodable reply costs only its sender's), the run log and
TensorBoard rows, checkpoints and resume, the saved model and the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from flwr.app import ArrayRecord, ConfigRecord, Error, Message
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.files import write_json_atomic
from fedcore.core.layers import LayerMap
from fedcore.core.server_optimizer import MeanDelta, ServerOptimizer
from fedcore.core.wire import dict_to_config
from fedcore.data.batching import Batch, make_batches
from fedcore.data.splits import server_splits
from fedcore.data.tables import label_names
from fedcore.methods.base import ClientInfo, ClientPlan, Planner
from fedcore.methods.registry import make_planner
from fedcore.model import build_model, load_tunable_state, tunable_state
from fedcore.training.evaluate import evaluate
from server_app import console, round_models
from server_app.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from server_app.model_export import save_portable
from server_app.nodes import query_clients, wait_for_nodes
from server_app.progress import Progress
from server_app.run_log import RunLog, new_run_dir
from server_app.run_report import write_run_report
from server_app.samples import generate_samples
from server_app.server_optimizer import make_server_optimizer
from server_app.strategy import UNDECODABLE, ClientOutcome, LayerwiseSettings, LayerwiseStrategy
from server_app.strategy import train_message as strategy_train_message
from server_app.tensorboard import open_tensorboard

#: the shortest wait for the clients' info replies at start-up, whatever round.timeout says
QUERY_TIMEOUT_S = 120.0


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
    #: the server's step (server.optimizer), whose state a checkpoint keeps
    optimizer: ServerOptimizer = field(default_factory=MeanDelta)
    #: plans and aggregates the rounds (set once the run has its name: every message carries it)
    strategy: LayerwiseStrategy = field(init=False)
    #: the global state as the strategy passes it between rounds
    arrays: ArrayRecord = field(init=False)


#: the run-config keys a client reads: which model, tuning, data partitioning and device profiles the run
#: uses (what to train and how travels in each client's plan)
CLIENT_KEYS = ("preset", "method", "seed", "model.", "tuning.", "data.", "clients.", "devices.")


def client_run_config(cfg: RunConfig) -> dict[str, Any]:
    """The part of the run config a train message carries: the run's identity, not its training settings."""
    return {key: value for key, value in cfg.to_flat().items() if key.startswith(CLIENT_KEYS)}


def run_records(cfg: RunConfig, run_name: str, simulated: bool) -> dict[str, ConfigRecord]:
    """The run's identity, which every train message carries besides the plan and the tensors: the
    client's part of the run config, the run's name, and whether it is a simulation."""
    return {
        wire.RUN_CONFIG: dict_to_config(client_run_config(cfg)),
        wire.RUN: dict_to_config({wire.RUN_NAME: run_name, wire.SIMULATED: simulated}),
    }


def train_message(
    client: ClientInfo, planned: ClientPlan, cfg: RunConfig, run_name: str, simulated: bool
) -> Message:
    """One client's train message exactly as the run's strategy sends it (for replaying a client round)."""
    records = run_records(cfg, run_name, simulated)
    return strategy_train_message(client.node_id, planned, records, cfg.round.wire_dtype)


def start_strategy(state: ServerState) -> None:
    """The run's LayerwiseStrategy, from the current global state."""
    records = run_records(state.cfg, state.run_name, state.simulated)
    settings = LayerwiseSettings.from_run_config(state.cfg)
    state.strategy = LayerwiseStrategy(
        state.planner, state.layer_map.group_of, settings, state.optimizer, records=records
    )
    state.arrays = state.strategy.arrays_of(state.global_state)


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
        optimizer=make_server_optimizer(cfg.server),
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
    state.optimizer = restore_optimizer(run_dir, checkpoint, cfg)
    state.first_round = checkpoint.round + 1
    state.best_accuracy = checkpoint.best_accuracy
    state.elapsed_before_s = checkpoint.elapsed_s
    state.holders = checkpoint.holders
    log = RunLog(run_dir, cfg.to_flat())
    log.truncate_after(checkpoint.round)
    round_models.drop_after(run_dir, checkpoint.round)
    return state, log, tokenizer


def run_round(grid: Grid, state: ServerState, round_number: int) -> list[ClientOutcome]:
    """One round: the strategy plans it, the replies come in with progress lines, the strategy aggregates.

    A reply that could not be decoded reaches the strategy as an error reply saying why.
    """
    cfg = state.cfg
    strategy = state.strategy
    messages = list(strategy.configure_train(round_number, state.arrays, ConfigRecord(), grid))
    label = f"round {round_number}/{cfg.rounds}"
    collected = state.progress.collect(grid, messages, cfg.round.timeout, label, cfg.limits.text_chars)
    replies = list(collected.replies.values())
    for message in messages:
        reason = collected.undecodable.get(message.metadata.dst_node_id)
        if reason is not None:
            replies.append(Message(Error(UNDECODABLE, reason), reply_to=message))
    del messages  # each payload lived in its message only
    arrays, _ = strategy.aggregate_train(round_number, replies)
    if arrays is not None:
        state.arrays = arrays
        state.global_state = strategy.global_state
        load_tunable_state(state.model, state.global_state)
    return strategy.outcomes


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


def ready_row(client: ClientInfo, first_round: int) -> dict[str, Any]:
    """A node that joined at a start (first or resumed) whose first round is ``first_round``: its identity,
    its examples and the device profile its plans are made for (stated in its node config, or measured
    by the node itself in deployment)."""
    return {
        "kind": "node",
        "node_id": client.node_id,
        "partition_id": client.partition_id,
        "status": "ready",
        "from_round": first_round,
        "examples": client.num_examples,
        "profile": dict(client.profile),
    }


def run_federation(grid: Grid, cfg: RunConfig) -> Path:
    """Run (or continue) one federation; returns the run directory."""
    state, log, tokenizer = prepare(cfg)
    state.run_name = log.run_id
    state.simulated = isinstance(grid, InMemoryGrid)
    start_strategy(state)
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
    for client in clients:
        log.row(ready_row(client, state.first_round))
    if len(clients) < cfg.clients.min:
        raise RuntimeError(f"only {len(clients)} client(s) answered; clients.min={cfg.clients.min}")
    state.strategy.clients = clients
    startup_s = time.perf_counter() - startup_began
    print(f"fedlayer: {len(clients)} of {len(node_ids)} node(s) ready in {startup_s:.1f} s", flush=True)

    labels = label_names(state.test)
    began = time.perf_counter() - state.elapsed_before_s
    for round_number in range(state.first_round, cfg.rounds + 1):
        round_began = time.perf_counter()
        outcomes = run_round(grid, state, round_number)
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
        if round_models.is_due(cfg, round_number):
            folder = round_models.folder_name(round_number)
            save_portable(log, state.model, tokenizer, cfg, labels, last, folder)
            round_models.keep_newest(log.dir, cfg.output.keep_last)
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
                optimizer_state=state.optimizer.state_dict(),
            ),
        )

    if cfg.output.save_model:
        save_portable(log, state.model, tokenizer, cfg, labels, last)
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
