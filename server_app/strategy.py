"""LayerwiseStrategy: a Flower Message-API Strategy whose clients each train and send back some layers.

Flower's stock strategies send every client the same message and refuse replies whose ArrayRecords carry
different keys. Here a planner (any of fedlayer's methods, or one of your own) gives each client its own
``LayerPlan`` and payload, and ``aggregate_train`` combines each parameter over only the clients that sent
it, after checking every reply and bounding each client's influence:

- ``configure_train``: sample the clients, plan the round, one message per client (the plan, the
  strategy's extra records, Flower's train config when not empty, and the payload);
- ``aggregate_train``: per planned client, its reply becomes a metrics row and, if sound, an update
  (``collect_reply``); the weights are capped, each layer group's update clipped (``fedcore.core.robust``),
  the deltas combined per parameter (``round.aggregator``), and the server optimiser applied (``MeanDelta``,
  FedAvg's step, by default). It returns the whole new global state, or None below ``min_clients`` sound
  replies.

fedlayer's own round loop (``server_app.federation``) calls these two methods; a plain ServerApp can call
``start()``; and it can be wrapped as Flower's DifferentialPrivacy* wrappers wrap FedAvg (they call
``configure_train``/``aggregate_train``/``configure_evaluate``/``aggregate_evaluate``/``summary`` and work on
the returned ArrayRecord). Federated evaluation is not part of a layer-wise round: ``configure_evaluate``
sends nothing; evaluate the global model on the server with ``start(evaluate_fn=...)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.aggregate import ClientUpdate, UpdateRejected, aggregate_deltas, validate_update
from fedcore.core.aggregators import Aggregator
from fedcore.core.limits import check_record, clip_text
from fedcore.core.plan import LayerPlan
from fedcore.core.reply_schema import TRAIN_METRICS, SchemaError, check_train_metrics, check_values
from fedcore.core.robust import cap_weights, clip_updates, stated_weight
from fedcore.core.seeding import derive_seed
from fedcore.core.server_optimizer import MeanDelta, ServerOptimizer
from fedcore.core.wire import dict_to_config, received_state, state_to_arrays
from fedcore.methods.base import ClientInfo, ClientPlan, ClientResult, Planner
from server_app.nodes import wait_for_nodes
from server_app.progress import by_node

#: the error code of a reply the server could not decode (fedlayer's loop passes it on as an error reply)
UNDECODABLE = 9001
#: the key under which Flower's train config travels, when the caller gives one
CONFIG = "config"

#: a train reply's metrics, checked against the plan that asked for them
MetricsCheck = Callable[[Mapping[str, Any], LayerPlan], dict[str, Any]]


def fedlayer_metrics(metrics: Mapping[str, Any], plan: LayerPlan) -> dict[str, Any]:
    """fedlayer's client schema (every key its client sends; probe losses when the plan asks for them)."""
    return check_train_metrics(metrics, probe=plan.probe_examples > 0)


#: what any client must state: its training examples (the aggregation weight), optionally its loss
MINIMAL_METRICS = {key: TRAIN_METRICS[key] for key in (wire.EXAMPLES, wire.TRAIN_LOSS)}


def minimal_metrics(metrics: Mapping[str, Any], plan: LayerPlan) -> dict[str, Any]:
    """The schema for clients other than fedlayer's: ``examples`` required, ``train_loss`` allowed."""
    return check_values(metrics, MINIMAL_METRICS, {wire.EXAMPLES})


@dataclass(frozen=True)
class LayerwiseSettings:
    """How rounds are sampled, checked and bounded (the run config's clients/round/limits sections)."""

    #: clients per round (0 = every known client), drawn with ``seed``
    per_round: int = 0
    seed: int = 0
    #: sound replies a round needs before it aggregates
    min_clients: int = 1
    #: the reply deadline a missing reply is reported against
    timeout: float = 600.0
    wire_dtype: str = "float32"
    aggregator: Aggregator = "mean"
    weight_cap: float = 0.0
    clip_factor: float = 0.0
    reply_mb: float = 4096.0
    text_chars: int = 1000
    list_items: int = 10_000
    check_metrics: MetricsCheck = fedlayer_metrics

    @classmethod
    def from_run_config(cls, cfg: RunConfig) -> LayerwiseSettings:
        return cls(
            per_round=cfg.clients.per_round,
            seed=cfg.seed,
            min_clients=cfg.clients.min,
            timeout=cfg.round.timeout,
            wire_dtype=cfg.round.wire_dtype,
            aggregator=cfg.round.aggregator,
            weight_cap=cfg.round.weight_cap,
            clip_factor=cfg.round.clip_factor,
            reply_mb=cfg.limits.reply_mb,
            text_chars=cfg.limits.text_chars,
            list_items=cfg.limits.list_items,
        )


def train_message(
    node_id: int,
    planned: ClientPlan,
    records: Mapping[str, ConfigRecord],
    wire_dtype: str,
    config: ConfigRecord | None = None,
) -> Message:
    """One client's train message: its plan, the ``records`` every message carries, Flower's train
    ``config`` when not empty, and its payload in the wire precision."""
    content = RecordDict(
        {
            wire.PLAN: dict_to_config(planned.plan.to_dict()),
            **records,
            **({CONFIG: config} if config is not None and len(config) else {}),
            wire.GLOBAL: state_to_arrays(planned.payload, wire_dtype),
        }
    )
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN)


@dataclass
class ClientOutcome:
    """One planned client's round: its metrics row and, if its reply was sound, its update."""

    row: dict[str, Any]
    update: ClientUpdate | None


def sample_clients(
    clients: list[ClientInfo], per_round: int, seed: int, round_number: int
) -> list[ClientInfo]:
    if not per_round or per_round >= len(clients):
        return clients
    rng = random.Random(derive_seed(seed, round_number))
    return sorted(rng.sample(clients, per_round), key=lambda c: c.partition_id)


def collect_reply(
    reply: Message,
    client: ClientInfo,
    plan: LayerPlan,
    expected: dict[str, torch.Size],
    group_of: Callable[[str], str],
    settings: LayerwiseSettings,
) -> ClientOutcome:
    """Turn one reply into a metrics row and, if it is sound, an update to aggregate.

    The reply's numbers enter the row only once they pass the schema, and never over the server's own
    fields (who answered, the status, the bytes measured here); its tensors are checked by what they
    declare (names, shapes, bytes) before any is decoded, and again as decoded before anything converts
    them. Every text the client controls is cut to limits.text-chars.
    """
    row: dict[str, Any] = {"node_id": client.node_id, "partition_id": client.partition_id}
    row["plan"] = plan.as_log()
    if reply.has_error():
        reason = clip_text(str(reply.error.reason), settings.text_chars)
        return ClientOutcome({**row, "status": "failed", "reason": reason}, None)
    try:
        metric_record = reply.content.metric_records[wire.TRAIN_METRICS]
        if len(metric_record) > settings.list_items:
            raise SchemaError(f"{len(metric_record)} metrics exceed limits.list-items={settings.list_items}")
        metrics = settings.check_metrics(dict(metric_record), plan)
        if client.examples_checked:  # a shared dataset's partition: the node keeps the one it stated
            stated = reply.content.config_records[wire.TRAIN_REPORT].get(wire.NODE_PARTITION_ID)
            if stated != client.partition_id:
                raise SchemaError(
                    f"{wire.NODE_PARTITION_ID}={clip_text(repr(stated), 40)} in this reply, but the node "
                    f"stated {client.partition_id} at start-up"
                )
        record = reply.content.array_records[wire.UPDATE]
        wanted = set(plan.train_groups)
        plan_expected = {n: s for n, s in expected.items() if group_of(n) in wanted}
        check_record(record, plan_expected, settings.reply_mb * 1e6, settings.list_items)
        update = received_state(record)
        validate_update(update, plan_expected, group_of, wire.wire_dtype_of(settings.wire_dtype))
    except (SchemaError, UpdateRejected) as exc:
        reason = clip_text(str(exc), settings.text_chars)
        return ClientOutcome({**row, "status": "rejected", "reason": reason}, None)
    except (KeyError, TypeError, ValueError) as exc:
        reason = clip_text(f"malformed reply: {exc!r}", settings.text_chars)
        return ClientOutcome({**row, "status": "rejected", "reason": reason}, None)
    row = {**metrics, **row, wire.BYTES_UP: record.count_bytes(), "status": "ok", "reason": None}
    weight = stated_weight(metrics[wire.EXAMPLES], client.num_examples)
    tensors = {name: tensor.float() for name, tensor in update.items()}
    return ClientOutcome(row, ClientUpdate(client.node_id, weight, tensors, client.examples_checked))


@dataclass
class _Sent:
    """What the strategy remembers of one message it planned: enough to judge the reply, not the payload."""

    client: ClientInfo
    plan: LayerPlan
    bytes_down: int
    #: the message's metadata, which the grid completes with the message id when it pushes the message
    metadata: Metadata = field(repr=False)


class LayerwiseStrategy(Strategy):
    """Per-client plans out, per-layer aggregation of the sound replies in (the module's round)."""

    def __init__(
        self,
        planner: Planner,
        group_of: Callable[[str], str],
        settings: LayerwiseSettings | None = None,
        optimizer: ServerOptimizer | None = None,
        records: Mapping[str, ConfigRecord] | None = None,
    ) -> None:
        """``group_of``: a parameter name's layer group (``LayerMap(model).group_of``); ``records``: config
        records every train message carries besides the plan (fedlayer's run config and run name)."""
        self.planner = planner
        self.group_of = group_of
        self.settings = settings or LayerwiseSettings()
        self.optimizer: ServerOptimizer = optimizer or MeanDelta()
        self.records = dict(records or {})
        #: the clients rounds sample from; found on the grid at the first round when left empty
        self.clients: list[ClientInfo] = []
        #: the current global state, as the optimiser last left it (the tensors the ArrayRecords hold)
        self.global_state: dict[str, torch.Tensor] = {}
        #: the last round's outcome per planned client, in plan order (fedlayer's loop logs them)
        self.outcomes: list[ClientOutcome] = []
        self._arrays: ArrayRecord | None = None
        self._sent: dict[int, _Sent] = {}

    def summary(self) -> None:
        log(INFO, "\t├── Planner: %s", type(self.planner).__name__)
        log(INFO, "\t├── Server optimiser: %s", type(self.optimizer).__name__)
        log(INFO, "\t└── Settings: %s", self.settings)

    def arrays_of(self, state: Mapping[str, torch.Tensor]) -> ArrayRecord:
        """Make ``state`` the global state; returns it as the ArrayRecord rounds pass around."""
        self.global_state = dict(state)
        self._arrays = ArrayRecord({name: tensor.detach().cpu() for name, tensor in state.items()})
        return self._arrays

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if arrays is not self._arrays:
            self.global_state = received_state(arrays)
            self._arrays = arrays
        if not self.clients:
            node_ids = wait_for_nodes(grid, self.settings.min_clients, self.settings.timeout)
            self.clients = [
                ClientInfo(node_id, partition_id) for partition_id, node_id in enumerate(node_ids)
            ]
        chosen = sample_clients(self.clients, self.settings.per_round, self.settings.seed, server_round)
        planned = self.planner.plan(server_round, chosen, self.global_state)
        self._sent = {}
        messages = []
        wire_dtype = self.settings.wire_dtype
        for client in chosen:
            client_plan = planned.pop(client.node_id)  # each payload then lives in its message only
            message = train_message(client.node_id, client_plan, self.records, wire_dtype, config)
            bytes_down = message.content.array_records[wire.GLOBAL].count_bytes()
            self._sent[client.node_id] = _Sent(client, client_plan.plan, bytes_down, message.metadata)
            messages.append(message)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        node_of = {sent.metadata.message_id: node_id for node_id, sent in self._sent.items()}
        answers = by_node(list(replies), node_of)
        shapes = {name: tensor.shape for name, tensor in self.global_state.items()}
        outcomes = []
        for node_id, sent in self._sent.items():
            answer = answers.get(node_id)
            if answer is not None and answer.has_error() and answer.error.code == UNDECODABLE:
                row = {"node_id": node_id, "partition_id": sent.client.partition_id, "status": "rejected"}
                outcome = ClientOutcome({**row, "reason": answer.error.reason}, None)
            elif answer is not None:
                outcome = collect_reply(answer, sent.client, sent.plan, shapes, self.group_of, self.settings)
            else:
                reason = f"no reply within round.timeout={self.settings.timeout:g} s"
                row = {"node_id": node_id, "partition_id": sent.client.partition_id, "status": "timeout"}
                outcome = ClientOutcome({**row, "reason": reason}, None)
            outcome.row.update(kind="client", round=server_round)
            outcome.row[wire.BYTES_DOWN] = sent.bytes_down
            outcomes.append(outcome)
        aggregated = self._bound_and_aggregate(outcomes)
        self.planner.observe(
            server_round,
            [ClientResult(o.row["partition_id"], o.update is not None, _numbers(o.row)) for o in outcomes],
        )
        self.outcomes = outcomes
        sound = sum(o.update is not None for o in outcomes)
        metrics = MetricRecord({"clients_ok": sound, "clients_failed": len(outcomes) - sound})
        return (self.arrays_of(self.global_state) if aggregated else None), metrics

    def _bound_and_aggregate(self, outcomes: list[ClientOutcome]) -> bool:
        """Bound every sound reply's influence (weight cap, norm clipping), record it in the client's row,
        and aggregate once there are min_clients sound replies; returns whether it aggregated."""
        sound = [o for o in outcomes if o.update is not None]
        updates = cap_weights([o.update for o in sound], self.settings.weight_cap)
        updates, scales = clip_updates(updates, self.group_of, self.settings.clip_factor)
        for outcome, update, scale in zip(sound, updates, scales, strict=True):
            outcome.row.update(weight=update.weight, clip_scale=scale)
        if len(updates) < self.settings.min_clients:
            return False
        deltas = aggregate_deltas(updates, self.settings.aggregator)
        self.global_state = self.optimizer.step(self.global_state, deltas)
        return True

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the global model is evaluated on the server (``evaluate_fn``)."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
