"""LayerwiseStrategy against an in-process grid: per-layer aggregation, reply checks, Flower's own loop and
a Flower DP wrapper around it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.serverapp.strategy.dp_fixed_clipping import KEY_CLIPPING_NORM

from fedcore.core import wire
from fedcore.core.plan import LayerPlan
from fedcore.methods.base import ClientInfo, ClientPlan, ClientResult
from server_app.strategy import UNDECODABLE, LayerwiseSettings, LayerwiseStrategy, minimal_metrics
from tests.inprocess_grid import InProcessGrid


def group_of(name: str) -> str:
    return name.split("/")[0]


def initial_state() -> dict[str, torch.Tensor]:
    return {
        "block.0/w": torch.zeros(3),
        "block.1/w": torch.zeros(3),
        "block.2/w": torch.ones(3),
        "head/w": torch.zeros(2),
    }


class OwnBlockAndHead:
    """Partition i trains block.i and the head; remembers what it observed."""

    def __init__(self) -> None:
        self.observed: list[ClientResult] = []

    def plan(
        self, round_number: int, clients: list[ClientInfo], global_state: dict[str, torch.Tensor]
    ) -> dict[int, ClientPlan]:
        return {
            c.node_id: ClientPlan(
                LayerPlan(round=round_number, rounds=5, train_groups=(f"block.{c.partition_id}", "head")),
                global_state,
            )
            for c in clients
        }

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        self.observed = results

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless."""


#: what the echo client last received, by partition id
received: dict[int, RecordDict] = {}
echo = ClientApp()


@echo.train()
def echo_train(msg: Message, context: Context) -> Message:
    """Partition p sends p + 1 for every trained parameter, with 10 x (p + 1) examples; partition 9 sends a
    wrong shape."""
    partition = int(context.node_config["partition-id"])
    received[partition] = msg.content
    groups = set(msg.content.config_records[wire.PLAN]["train_groups"])
    start = msg.content.array_records[wire.GLOBAL].to_torch_state_dict()
    update = {n: torch.full_like(t, partition + 1.0) for n, t in start.items() if group_of(n) in groups}
    if partition == 9:
        update = {n: torch.zeros(7) for n in update}
    metrics = MetricRecord({wire.EXAMPLES: 10 * (partition + 1), wire.TRAIN_LOSS: 0.5})
    return Message(RecordDict({wire.UPDATE: ArrayRecord(update), wire.TRAIN_METRICS: metrics}), reply_to=msg)


def make_strategy(**settings: Any) -> LayerwiseStrategy:
    rules = LayerwiseSettings(**{"min_clients": 2, "check_metrics": minimal_metrics, **settings})
    return LayerwiseStrategy(OwnBlockAndHead(), group_of, rules)


def grid_of(*partitions: int) -> InProcessGrid:
    return InProcessGrid(echo, [{"partition-id": p} for p in partitions])


def one_round(strategy: LayerwiseStrategy, grid: InProcessGrid, replies_of=None) -> ArrayRecord | None:
    strategy.clients = [ClientInfo(n, int(c.node_config["partition-id"])) for n, c in grid.contexts.items()]
    arrays = strategy.arrays_of(initial_state())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    if replies_of:
        replies = replies_of(messages, replies)
    new, _ = strategy.aggregate_train(1, replies)
    return new


def test_each_parameter_is_the_weighted_mean_over_the_clients_that_sent_it() -> None:
    strategy = make_strategy()
    before = initial_state()
    new = one_round(strategy, grid_of(0, 1))
    assert new is not None
    state = new.to_torch_state_dict()
    assert torch.equal(state["block.0/w"], torch.full((3,), 1.0)), "block.0: client 0 alone"
    assert torch.equal(state["block.1/w"], torch.full((3,), 2.0)), "block.1: client 1 alone"
    assert torch.allclose(state["head/w"], torch.full((2,), (10 * 1 + 20 * 2) / 30)), (
        "head: weighted by examples"
    )
    assert torch.equal(state["block.2/w"], before["block.2/w"]), "nobody trained block.2"
    assert [r.ok for r in strategy.planner.observed] == [True, True]
    assert [o.row["status"] for o in strategy.outcomes] == ["ok", "ok"]


def test_messages_carry_each_clients_own_plan_and_the_payload() -> None:
    strategy = make_strategy()
    one_round(strategy, grid_of(0, 1))
    plans = {p: LayerPlan.from_dict(dict(received[p].config_records[wire.PLAN])) for p in (0, 1)}
    assert plans[0].train_groups == ("block.0", "head") and plans[1].train_groups == ("block.1", "head")
    assert set(received[0].array_records[wire.GLOBAL]) == set(initial_state())
    assert "config" not in received[0].config_records, "an empty train config is not sent"


def test_unsound_undecodable_and_missing_replies_get_rows_and_no_weight() -> None:
    strategy = make_strategy(min_clients=1)

    def damage(messages: list[Message], replies: list[Message]) -> list[Message]:
        by_partition = dict(zip((0, 9, 1, 2), messages, strict=True))
        kept = [r for r in replies if r.metadata.reply_to_message_id != by_partition[2].metadata.message_id]
        kept = [r for r in kept if r.metadata.reply_to_message_id != by_partition[1].metadata.message_id]
        return [
            *kept,
            Message(Error(UNDECODABLE, "undecodable reply (ValueError: x)"), reply_to=by_partition[1]),
        ]

    new = one_round(strategy, grid_of(0, 9, 1, 2), damage)
    rows = {o.row["partition_id"]: o.row for o in strategy.outcomes}
    assert rows[0]["status"] == "ok"
    assert rows[9]["status"] == "rejected" and "shape" in rows[9]["reason"]
    assert rows[1] == {**rows[1], "status": "rejected", "reason": "undecodable reply (ValueError: x)"}
    assert rows[2]["status"] == "timeout" and "round.timeout" in rows[2]["reason"]
    assert new is not None
    assert torch.equal(new.to_torch_state_dict()["head/w"], torch.full((2,), 1.0)), (
        "only the sound reply counts"
    )


def test_below_min_clients_the_round_does_not_aggregate() -> None:
    strategy = make_strategy(min_clients=3)
    assert one_round(strategy, grid_of(0, 1)) is None
    assert all(o.row["status"] == "ok" for o in strategy.outcomes)


def test_flowers_start_loop_runs_it_and_finds_the_nodes_itself() -> None:
    strategy = make_strategy()
    result = strategy.start(grid_of(0, 1), ArrayRecord(initial_state()), num_rounds=2, timeout=5)
    state = result.arrays.to_torch_state_dict()
    assert torch.equal(state["block.0/w"], torch.full((3,), 2.0)), "two rounds of +1"
    assert torch.equal(state["block.2/w"], torch.ones(3))
    assert sorted(c.partition_id for c in strategy.clients) == [0, 1]
    assert result.train_metrics_clientapp[2]["clients_ok"] == 2


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_flowers_client_side_dp_wrapper_wraps_it(noise: float) -> None:
    wrapped = DifferentialPrivacyClientSideFixedClipping(make_strategy(), noise, 0.5, num_sampled_clients=2)
    result = wrapped.start(grid_of(0, 1), ArrayRecord(initial_state()), num_rounds=1, timeout=5)
    assert received[0].config_records["config"][KEY_CLIPPING_NORM] == 0.5, (
        "the wrapper's config reaches clients"
    )
    state = result.arrays.to_torch_state_dict()
    exact = torch.full((3,), 1.0)
    assert torch.equal(state["block.0/w"], exact) == (noise == 0.0), "noise is added to the aggregate"


def test_updates_are_clipped_per_group_including_a_blocks_sole_contributor() -> None:
    """Head: 1, 2, 3 from three clients, median 2; block.p: client p alone, bounded by the others' RMS."""
    strategy = make_strategy(clip_factor=1.0)
    new = one_round(strategy, grid_of(0, 1, 2))
    scales = {o.row["partition_id"]: o.row["clip_scale"] for o in strategy.outcomes}
    assert scales == {0: 1.0, 1: pytest.approx(1 / 2), 2: pytest.approx(1 / 3)}
    state = new.to_torch_state_dict()
    assert torch.allclose(state["block.2/w"], 1 + torch.full((3,), 1.0)), (
        "3 clipped to the others' median RMS"
    )
    head = (10 * 1 + 20 * 2 + 30 * 2) / 60  # client 2's head update clipped from 3 to the median 2
    assert torch.allclose(state["head/w"], torch.full((2,), head))


def test_a_node_that_switches_partitions_mid_run_is_rejected() -> None:
    """A shared dataset's partition is counted by the server at start-up: each reply must name it again."""
    strategy = make_strategy(min_clients=1)
    grid = grid_of(0, 1)
    strategy.clients = [
        ClientInfo(n, int(c.node_config["partition-id"]), examples_checked=True)
        for n, c in grid.contexts.items()
    ]
    messages = list(strategy.configure_train(1, strategy.arrays_of(initial_state()), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(messages))
    for reply in replies:  # both nodes now say partition 0: partition 1's node has switched
        reply.content[wire.TRAIN_REPORT] = ConfigRecord({wire.NODE_PARTITION_ID: 0})
    strategy.aggregate_train(1, replies)
    rows = {o.row["partition_id"]: o.row for o in strategy.outcomes}
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "rejected"
    assert rows[1]["reason"] == "partition-id=0 in this reply, but the node stated 1 at start-up"
