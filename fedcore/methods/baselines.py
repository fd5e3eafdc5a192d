"""FedAvg (full), FedLoRA, FedBitFit and DropPEFT: every client trains every tunable group, every round.

The three baselines differ only in which parameters are tunable (the model's tuning mode), so one
planner serves all of them; each client's layer dropout comes from a ``DropPolicy``: the run's fixed
configuration for the baselines, a per-device bandit for DropPEFT (``fedcore/methods/droppeft``).
"""

from __future__ import annotations

import dataclasses
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
from fedcore.methods.drop_policy import DropChoice, DropPolicy, FixedDrop


class AllLayersPlanner:
    def __init__(
        self,
        cfg: RunConfig,
        tunable_groups: list[str],
        num_blocks: int,
        sensitivity: list[float] | None = None,
        drop_policy: DropPolicy | None = None,
    ) -> None:
        """``drop_policy``: each client's layer dropout (default: the run's fixed configuration, if any)."""
        self.cfg = cfg
        self.tunable_groups = tunable_groups
        self.num_blocks = num_blocks
        self.drop_policy = drop_policy or FixedDrop(fixed_drop(cfg))
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
        """Every client gets every tunable parameter, with the dropout the policy chose for it."""
        choices = self.drop_policy.choose(clients)
        return {
            c.node_id: ClientPlan(self.client_plan(round_number, c, choices[c.partition_id]), global_state)
            for c in clients
        }

    def client_plan(self, round_number: int, client: ClientInfo, choice: DropChoice) -> LayerPlan:
        plan = base_plan(
            self.cfg,
            round_number,
            client,
            self.tunable_groups,
            self.num_blocks,
            choice.drop,
            self.sensitivity,
        )
        return dataclasses.replace(plan, probe_examples=choice.probe_examples)

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        self.drop_policy.observe(results)

    def state_dict(self) -> dict[str, Any]:
        sensitivity = {"block_sensitivity": self.sensitivity} if self.sensitivity else {}
        return {**self.drop_policy.state_dict(), **sensitivity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drop_policy.load_state_dict(state)
