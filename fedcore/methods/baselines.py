"""FedAvg (full), FedLoRA and FedBitFit: every client trains every tunable group, every round.

The three baselines differ only in which parameters are tunable (the model's tuning mode), so one
planner serves all of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.methods.base import (
    ClientInfo,
    ClientPlan,
    ClientResult,
    base_plan,
    drop_sensitivity,
    fixed_drop,
    tunable_groups,
)


class AllLayersPlanner:
    def __init__(
        self,
        cfg: RunConfig,
        tunable_groups: list[str],
        num_blocks: int,
        sensitivity: list[float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.tunable_groups = tunable_groups
        self.num_blocks = num_blocks
        self.drop = fixed_drop(cfg)
        #: block removal sensitivity, when a dropout shape reads it
        self.sensitivity = sensitivity

    @classmethod
    def from_model(
        cls, cfg: RunConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase
    ) -> AllLayersPlanner:
        """Every tunable group of the server's global model, every round."""
        return cls(
            cfg, tunable_groups(model), LayerMap(model).num_blocks, drop_sensitivity(cfg, model, tokenizer)
        )

    def plan(
        self, round_number: int, clients: list[ClientInfo], global_state: dict[str, torch.Tensor]
    ) -> dict[int, ClientPlan]:
        """Every client gets every tunable parameter."""
        return {c.node_id: ClientPlan(self.client_plan(round_number, c), global_state) for c in clients}

    def client_plan(self, round_number: int, client: ClientInfo) -> LayerPlan:
        return base_plan(
            self.cfg, round_number, client, self.tunable_groups, self.num_blocks, self.drop, self.sensitivity
        )

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"block_sensitivity": self.sensitivity} if self.sensitivity else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
