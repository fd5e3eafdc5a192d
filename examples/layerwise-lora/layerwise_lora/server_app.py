"""A ServerApp that runs LayerwiseStrategy with Flower's own ``Strategy.start`` loop.

The planner gives each client the classifier and one block's adapters, a different block per client and
round, so every reply carries a different set of keys; the strategy averages each parameter over the
clients that sent it. Run config (all optional): ``num-server-rounds``, ``local-steps``, ``lr``,
``server-optimizer`` ("mean" or "fedadam").
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from fedcore.core.layers import LayerMap, block_group
from fedcore.core.plan import LayerPlan
from fedcore.core.server_optimizer import FedAdam, MeanDelta
from fedcore.methods.base import ClientInfo, ClientPlan, ClientResult
from layerwise_lora.task import BLOCKS, build_model, evaluate, load_state, make_data, tunable_state
from server_app.strategy import LayerwiseSettings, LayerwiseStrategy, minimal_metrics

#: the server's held-out data (clients draw theirs with their partition id as the seed)
TEST_SEED = 10_000


class OneBlockEach:
    """Client i trains the classifier and block (i + round) mod BLOCKS."""

    def __init__(self, rounds: int, steps: int, lr: float) -> None:
        self.rounds, self.steps, self.lr = rounds, steps, lr

    def plan(
        self, round_number: int, clients: list[ClientInfo], global_state: dict[str, torch.Tensor]
    ) -> dict[int, ClientPlan]:
        plans = {}
        for client in clients:
            block = block_group((client.partition_id + round_number) % BLOCKS)
            plan = LayerPlan(
                round=round_number,
                rounds=self.rounds,
                train_groups=(block, "head"),
                steps=self.steps,
                lr=self.lr,
                seed=round_number * 1000 + client.partition_id,
            )
            plans[client.node_id] = ClientPlan(plan, global_state)
        return plans

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        """A fixed schedule learns nothing from the results."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


def run(grid: Grid, config: dict[str, Any]) -> Result:
    """The whole federation; returns Flower's Result (final arrays, the server's metrics per round)."""
    rounds = int(config.get("num-server-rounds", 3))
    model = build_model()
    test_ids, test_labels = make_data(TEST_SEED, 256)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_state(model, arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test_ids, test_labels)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    optimizer = FedAdam() if config.get("server-optimizer") == "fedadam" else MeanDelta()
    strategy = LayerwiseStrategy(
        OneBlockEach(rounds, int(config.get("local-steps", 10)), float(config.get("lr", 1e-2))),
        LayerMap(model).group_of,
        LayerwiseSettings(min_clients=2, check_metrics=minimal_metrics),
        optimizer,
    )
    return strategy.start(grid, ArrayRecord(tunable_state(model)), rounds, evaluate_fn=evaluate_fn)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, dict(context.run_config))
