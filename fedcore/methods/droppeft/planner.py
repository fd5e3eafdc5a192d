"""DropPEFT: every client trains all tunable groups with stochastic layer dropout whose configuration
a per-device bandit picks online (``droppeft.*``); with ``ptls.fraction`` > 0, as in the paper, it keeps
its most-updated blocks personal (PTLS).

The reward of an arm is the device's training progress per second: the log-ratio of the full-model loss
on held-out local examples before and after the round, divided by the round's device time (this
project's choice of reward; the paper states only that an exploration-exploitation strategy configures
the rates).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.layers import LayerMap
from fedcore.mechanisms.layer_dropout import DropConfig
from fedcore.methods.base import ClientInfo, ClientResult, drop_sensitivity, fixed_drop, tunable_groups
from fedcore.methods.baselines import AllLayersPlanner
from fedcore.methods.drop_policy import DropChoice
from fedcore.methods.droppeft.bandit import DropoutBandit, arm_grid, progress_reward


def device_key(partition_id: int) -> str:
    """One arm set per client (the paper configures each device separately)."""
    return f"client-{partition_id}"


class BanditDrop:
    """DropPEFT's dropout policy: per device, the arm its bandit selects, rewarded by the probe losses."""

    def __init__(self, cfg: RunConfig) -> None:
        """The arms come from ``cfg.droppeft``; a fixed ``drop.mode`` overrides them."""
        self.bandit = DropoutBandit(
            arm_grid(cfg.droppeft.rate_grid(), cfg.droppeft.shape_grid()),
            exploration=cfg.droppeft.exploration,
            discount=cfg.droppeft.discount,
            prune=cfg.droppeft.discount == 1.0,  # a pruned arm never returns: wrong for drifting devices
        )
        self.fixed = fixed_drop(cfg)
        if self.fixed is None and len(self.bandit.arms) == 1:
            # one arm leaves nothing to choose: it runs as a fixed configuration, without the probe
            self.fixed = self.bandit.arms[0]
        self.probe_examples = cfg.droppeft.probe_examples
        self.choices: dict[int, DropConfig] = {}
        self.rewards: dict[str, float] = {}

    def choose(self, clients: list[ClientInfo]) -> dict[int, DropChoice]:
        self.choices = {}  # this round's arms only: observe() and the logs speak of the clients picked
        choices = {}
        for client in clients:
            arm = self.fixed or self.bandit.select(device_key(client.partition_id))
            self.choices[client.partition_id] = arm
            choices[client.partition_id] = DropChoice(arm, 0 if self.fixed else self.probe_examples)
        return choices

    def observe(self, results: list[ClientResult]) -> None:
        self.rewards = {}
        if self.fixed is not None:
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bandit.load_state_dict(state["bandit"])
        self.choices = {int(k.split("-")[1]): DropConfig.from_label(v) for k, v in state["choices"].items()}
        self.rewards = dict(state["rewards"])


class DropPeftPlanner(AllLayersPlanner):
    """The all-layers planner built with the bandit as its dropout policy (nothing else differs)."""

    @classmethod
    def from_model(
        cls, cfg: RunConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase
    ) -> DropPeftPlanner:
        sensitivity = drop_sensitivity(cfg, model, tokenizer)
        groups, blocks = tunable_groups(model), LayerMap(model).num_blocks
        return cls(cfg, groups, blocks, sensitivity, BanditDrop(cfg))
