"""FedAvg (full), FedLoRA and FedBitFit: every client trains every tunable group, every round.

The three baselines differ only in which parameters are tunable (the model's tuning mode), so one
planner serves all of them.
"""

from __future__ import annotations

from typing import Any

from fedcore.config import RunConfig
from fedcore.plan import LayerPlan
from fedcore.planners.base import ClientInfo, ClientResult
from fedcore.seeding import derive_seed


def base_plan(cfg: RunConfig, round_number: int, client: ClientInfo, train_groups: list[str]) -> LayerPlan:
    """The plan every method starts from: train these groups with the run's local-training settings."""
    return LayerPlan(
        round=round_number,
        rounds=cfg.rounds,
        train_groups=tuple(train_groups),
        steps=cfg.train.local_steps,
        epochs=cfg.train.local_epochs,
        lr=cfg.learning_rate,
        seed=derive_seed(cfg.seed, round_number, client.partition_id),
    )


class AllLayersPlanner:
    def __init__(self, cfg: RunConfig, tunable_groups: list[str]) -> None:
        self.cfg = cfg
        self.tunable_groups = tunable_groups

    def plan(self, round_number: int, clients: list[ClientInfo]) -> dict[int, LayerPlan]:
        return {c.node_id: base_plan(self.cfg, round_number, c, self.tunable_groups) for c in clients}

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}
