"""DropPEFT: every client trains all tunable groups with stochastic layer dropout whose configuration
a per-device bandit picks online (``droppeft.*``); with ``ptls.fraction`` > 0, as in the paper, it keeps
its most-updated blocks personal (PTLS).

The reward of an arm is the device's training progress per second: the log-ratio of the full-model loss
on held-out local examples before and after the round, divided by the round's device time (this
project's choice of reward; the paper states only that an exploration-exploitation strategy configures
the rates).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.plan import LayerPlan
from fedcore.mechanisms.layer_dropout import DropConfig
from fedcore.methods.base import ClientInfo, ClientPlan, ClientResult, base_plan
from fedcore.methods.baselines import AllLayersPlanner
from fedcore.methods.droppeft.bandit import DropoutBandit, arm_grid, progress_reward


def device_key(partition_id: int) -> str:
    """One arm set per client (the paper configures each device separately)."""
    return f"client-{partition_id}"


class DropPeftPlanner(AllLayersPlanner):
    """The baselines' plan (all tunable groups, same payload) with a bandit-chosen dropout configuration."""

    def __init__(self, cfg: RunConfig, *args: Any) -> None:
        """The arguments of ``AllLayersPlanner``; the bandit's arms come from ``cfg.drop``."""
        super().__init__(cfg, *args)
        self.bandit = DropoutBandit(
            arm_grid(cfg.droppeft.rate_grid(), cfg.droppeft.shape_grid()),
            exploration=cfg.droppeft.exploration,
            discount=cfg.droppeft.discount,
            prune=cfg.droppeft.discount == 1.0,  # a pruned arm never returns: wrong for drifting devices
        )
        if self.drop is None and len(self.bandit.arms) == 1:
            # one arm leaves nothing to choose: it runs as a fixed configuration, without the probe
            self.drop = self.bandit.arms[0]
        self.choices: dict[int, DropConfig] = {}
        self.rewards: dict[str, float] = {}

    def plan(
        self, round_number: int, clients: list[ClientInfo], global_state: dict[str, torch.Tensor]
    ) -> dict[int, ClientPlan]:
        self.choices = {}  # this round's arms only: observe() and the logs speak of the clients picked
        return super().plan(round_number, clients, global_state)

    def client_plan(self, round_number: int, client: ClientInfo) -> LayerPlan:
        arm = self.drop or self.bandit.select(device_key(client.partition_id))
        self.choices[client.partition_id] = arm
        plan = base_plan(
            self.cfg, round_number, client, self.tunable_groups, self.num_blocks, arm, self.sensitivity
        )
        if self.drop is None:
            plan = dataclasses.replace(plan, probe_examples=self.cfg.droppeft.probe_examples)
        return plan

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        self.rewards = {}
        if self.drop is not None:
            return
        for result in results:
            metrics = result.metrics
            if not result.ok or wire.PROBE_LOSS_BEFORE not in metrics:
                continue
            reward = progress_reward(
                metrics[wire.PROBE_LOSS_BEFORE], metrics[wire.PROBE_LOSS_AFTER], metrics[wire.DEVICE_TIME_S]
            )
            key = device_key(result.partition_id)
            self.bandit.update(key, self.choices[result.partition_id], reward)
            self.rewards[key] = reward

    def state_dict(self) -> dict[str, Any]:
        return {
            "choices": {device_key(p): arm.label for p, arm in sorted(self.choices.items())},
            "rewards": self.rewards,
            "bandit": self.bandit.state_dict(),
            **super().state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bandit.load_state_dict(state["bandit"])
        self.choices = {int(k.split("-")[1]): DropConfig.from_label(v) for k, v in state["choices"].items()}
        self.rewards = dict(state["rewards"])
