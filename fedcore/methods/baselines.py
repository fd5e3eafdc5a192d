"""FedAvg (full), FedLoRA and FedBitFit: every client trains every tunable group, every round.

The three baselines differ only in which parameters are tunable (the model's tuning mode), so one
planner serves all of them. ``base_plan`` is also where the orthogonal options every method accepts
enter a plan: a fixed layer-dropout configuration (``drop.mode=fixed``) and personal layers
(``ptls.fraction``).
"""

from __future__ import annotations

from typing import Any

import torch

from fedcore.config import RunConfig
from fedcore.core.plan import LayerPlan
from fedcore.core.seeding import derive_seed
from fedcore.methods.base import ClientInfo, ClientResult
from fedcore.methods.droppeft.bandit import DropConfig


def fixed_drop(cfg: RunConfig) -> DropConfig | None:
    return DropConfig(cfg.drop.mean_rate, cfg.drop.shape) if cfg.drop_mode == "fixed" else None


def base_plan(
    cfg: RunConfig,
    round_number: int,
    client: ClientInfo,
    train_groups: list[str],
    num_blocks: int,
    drop: DropConfig | None = None,
) -> LayerPlan:
    """The plan every method starts from: train these groups with the run's local-training settings."""
    personal = cfg.personal_fraction
    return LayerPlan(
        round=round_number,
        rounds=cfg.rounds,
        train_groups=tuple(train_groups),
        drop_rates=drop.rates(num_blocks) if drop and drop.mean_rate > 0 else (),
        drop_warmup=cfg.drop.warmup,
        personal_fraction=personal,
        steps=cfg.train.local_steps,
        epochs=cfg.train.local_epochs,
        lr=cfg.learning_rate,
        seed=derive_seed(cfg.seed, round_number, client.partition_id),
        evaluate_local=personal > 0,
        label=drop.label if drop else "",
    )


class AllLayersPlanner:
    def __init__(self, cfg: RunConfig, tunable_groups: list[str], num_blocks: int) -> None:
        self.cfg = cfg
        self.tunable_groups = tunable_groups
        self.num_blocks = num_blocks
        self.drop = fixed_drop(cfg)

    def plan(self, round_number: int, clients: list[ClientInfo]) -> dict[int, LayerPlan]:
        return {
            c.node_id: base_plan(self.cfg, round_number, c, self.tunable_groups, self.num_blocks, self.drop)
            for c in clients
        }

    def payload(self, node_id: int, global_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return global_state

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
