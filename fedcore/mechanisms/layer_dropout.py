"""Stochastic transformer layer dropout (STLD): each training step runs only a sampled subset of blocks.

Dropped blocks are removed from the model's block list for the duration of the forward pass, so they do
no forward or backward work and keep no activations; there is no masking or multiply-by-zero. The blocks
are the same module objects, so each keeps its own bookkeeping (layer index, attention type). Evaluation
never enters this context and always runs the full depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from fedcore.core.layers import find_blocks, swap_blocks

Shape = Literal["uniform", "incremental"]
SHAPES: tuple[str, ...] = get_args(Shape)


@dataclass(frozen=True)
class DropConfig:
    """A dropout configuration: the mean per-block drop probability and how it is spread over the depth.

    A fixed configuration (``drop.mode=fixed``) and every arm of DropPEFT's bandit are one of these.
    """

    mean_rate: float
    shape: Shape

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean_rate) and 0.0 <= self.mean_rate < 1.0):
            raise ValueError(f"mean_rate must be in [0, 1), got {self.mean_rate!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")

    def rates(self, num_blocks: int, max_rate: float = 0.95) -> tuple[float, ...]:
        """Per-block drop probabilities whose mean is exactly `mean_rate`.

        "incremental" follows the stochastic-depth rule p_l ∝ (l+1)/L, so deep blocks (closer to the head)
        are dropped more often than shallow ones. Probabilities above `max_rate` are clipped and the excess is
        spread proportionally over the unclipped blocks, which keeps both the mean and the increasing shape.
        """
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if not (math.isfinite(max_rate) and 0.0 <= max_rate <= 1.0):
            raise ValueError(f"max_rate must be in [0, 1], got {max_rate!r}")
        if self.mean_rate > max_rate:
            raise ValueError(f"mean_rate {self.mean_rate} exceeds max_rate {max_rate}")
        if self.shape == "uniform":
            return (self.mean_rate,) * num_blocks
        # Water-filling: the clipped blocks form a suffix (weights increase), so grow it until the largest
        # unclipped block fits under max_rate.
        total = self.mean_rate * num_blocks
        clipped = 0
        while True:
            free = num_blocks - clipped
            if free == 0:
                return (max_rate,) * num_blocks
            scale = (total - clipped * max_rate) / (free * (free + 1) / 2)
            if scale * free <= max_rate:
                return tuple(scale * (block + 1) for block in range(free)) + (max_rate,) * clipped
            clipped += 1

    @property
    def label(self) -> str:
        """Readable and exactly invertible name, used as the arm key in logs and in `state_dict`."""
        short = f"{self.mean_rate:.2f}"
        rate = short if float(short) == self.mean_rate else repr(self.mean_rate)
        return f"p{rate}-{self.shape}"

    @classmethod
    def from_label(cls, label: str) -> DropConfig:
        """Inverse of `label`."""
        rate, sep, shape = label.rpartition("-")
        if not sep or not rate.startswith("p"):
            raise ValueError(f"not a DropConfig label: {label!r}")
        try:
            mean_rate = float(rate[1:])
        except ValueError:
            raise ValueError(f"not a DropConfig label: {label!r}") from None
        return cls(mean_rate, shape)  # type: ignore[arg-type]  # validated in __post_init__


def sample_active_blocks(drop_rates: Sequence[float], generator: torch.Generator) -> list[int]:
    """Drop block l with probability drop_rates[l], independently; at least one block always runs.

    If every block was drawn as dropped, the block with the lowest drop rate (first on ties) is kept,
    so the forward pass stays a transformer.
    """
    draws = torch.rand(len(drop_rates), generator=generator).tolist()
    active = [i for i, (u, p) in enumerate(zip(draws, drop_rates, strict=True)) if u >= p]
    if not active:
        active = [min(range(len(drop_rates)), key=lambda i: drop_rates[i])]
    return active


def only_blocks(model: nn.Module, active: Sequence[int]) -> AbstractContextManager[None]:
    """Temporarily replace the model's block list by the active blocks (in their original order)."""
    _, blocks = find_blocks(model)
    return swap_blocks(model, nn.ModuleList([blocks[i] for i in sorted(active)]))
