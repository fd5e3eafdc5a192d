"""Stochastic transformer layer dropout (STLD): each training step runs only a sampled subset of blocks.

Dropped blocks are removed from the model's block list for the duration of the forward pass, so they do
no forward or backward work and keep no activations; there is no masking or multiply-by-zero. The blocks
are the same module objects, so each keeps its own bookkeeping (layer index, attention type). Evaluation
never enters this context and always runs the full depth.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from fedcore.core.drop_shapes import DROP_SHAPES, DropShape
from fedcore.core.layers import find_blocks, swap_blocks

#: the highest drop probability a plan gives any block
MAX_PLAN_RATE = 0.95


@dataclass(frozen=True)
class DropConfig:
    """A dropout configuration: the mean per-block drop probability and how it is spread over the depth.

    A fixed configuration (``drop.mode=fixed``) and every arm of DropPEFT's bandit are one of these.
    """

    mean_rate: float
    shape: DropShape

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean_rate) and 0.0 <= self.mean_rate < 1.0):
            raise ValueError(f"mean_rate must be in [0, 1), got {self.mean_rate!r}")
        if self.shape not in DROP_SHAPES:
            raise ValueError(f"shape must be one of {DROP_SHAPES}, got {self.shape!r}")

    def rates(
        self, num_blocks: int, max_rate: float = MAX_PLAN_RATE, sensitivity: Sequence[float] | None = None
    ) -> tuple[float, ...]:
        """Per-block drop probabilities whose mean is exactly `mean_rate`.

        "incremental" follows the stochastic-depth rule p_l ∝ (l+1)/L, so deep blocks (closer to the head)
        are dropped more often than shallow ones. "sensitivity" (this project's own) spreads the rate by
        ``sensitivity_weights(sensitivity)``: blocks the pretrained model cannot do without are never
        dropped, the more sensitive of the others less often (``fedcore/mechanisms/block_sensitivity.py``).
        Probabilities above `max_rate` are clipped and the excess is spread proportionally over the
        unclipped blocks, which keeps the mean and the shape.
        """
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if not (math.isfinite(max_rate) and 0.0 <= max_rate <= 1.0):
            raise ValueError(f"max_rate must be in [0, 1], got {max_rate!r}")
        if self.mean_rate > max_rate:
            raise ValueError(f"mean_rate {self.mean_rate} exceeds max_rate {max_rate}")
        if self.shape == "uniform":
            return (self.mean_rate,) * num_blocks
        if self.shape == "incremental":
            return spread_rate(self.mean_rate, [block + 1 for block in range(num_blocks)], max_rate)
        if sensitivity is None or len(sensitivity) != num_blocks:
            raise ValueError(f"shape 'sensitivity' needs one sensitivity per block ({num_blocks})")
        return spread_rate(self.mean_rate, sensitivity_weights(sensitivity), max_rate)

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


#: the highest mean rate ``speed_matched`` gives a slow device: a step must still train most of the depth
MAX_MATCHED_RATE = 0.75


def speed_matched(drop: DropConfig, speed: float, target_speed: float) -> DropConfig:
    """The configuration a device of ``speed`` runs so that its blocks take no longer than a device of
    ``target_speed`` at full depth (this project's rule; ``drop.target-speed``).

    A synchronous round lasts as long as its slowest client. A device k times slower than the target runs
    a mean rate of at least 1 - 1/k (a quarter-speed device under a half-speed target: 0.5), at most
    ``MAX_MATCHED_RATE``, in ``drop``'s shape; devices at or above the target run ``drop`` unchanged.
    """
    if target_speed <= 0 or speed >= target_speed:
        return drop
    rate = min(MAX_MATCHED_RATE, 1.0 - speed / target_speed)
    return drop if drop.mean_rate >= rate else DropConfig(rate, drop.shape)


def memory_matched(drop: DropConfig, memory_blocks: int, num_blocks: int) -> DropConfig:
    """The configuration a device whose memory trains ``memory_blocks`` of ``num_blocks`` blocks at once
    runs: a mean rate of at least 1 - memory_blocks / num_blocks, so that the blocks a step runs fit its
    memory on average (this project's rule; unlike ``speed_matched`` not capped at ``MAX_MATCHED_RATE``,
    since a step that does not fit fails, only at the highest rate a plan holds, ``MAX_PLAN_RATE``).
    ``memory_blocks`` 0 = memory not known: ``drop`` unchanged."""
    if memory_blocks <= 0 or memory_blocks >= num_blocks:
        return drop
    rate = min(MAX_PLAN_RATE, 1.0 - memory_blocks / num_blocks)
    return drop if drop.mean_rate >= rate else DropConfig(rate, drop.shape)


#: a block whose removal moves the model more than this many times the median block is never dropped
PROTECT_FACTOR = 2.0


def sensitivity_weights(scores: Sequence[float], protect_factor: float = PROTECT_FACTOR) -> list[float]:
    """min(1, median / score) per block, and 0 above ``protect_factor`` x the median.

    A typical block weighs 1 and one that matters k times more than the median weighs 1/k, so the drop
    rate it receives shrinks in proportion; the few blocks the pretrained model cannot do without are
    never dropped: a step that drops one of them trains the head and adapters on features the full model
    never produces (``docs/research/layer-dropout-per-step-cost.md``).
    """
    median = statistics.median(scores)
    protected = set(protected_blocks(scores, protect_factor))
    return [
        0.0 if index in protected else 1.0 if score <= median else median / score
        for index, score in enumerate(scores)
    ]


def protected_blocks(scores: Sequence[float], protect_factor: float = PROTECT_FACTOR) -> list[int]:
    """The blocks whose removal sensitivity exceeds ``protect_factor`` x the median: those the pretrained
    model cannot do without (never dropped by the ``sensitivity`` shape; kept whole by LEFF students with
    ``leff.keep-protected``)."""
    median = statistics.median(scores)
    return [index for index, score in enumerate(scores) if score > protect_factor * median]


def spread_rate(mean_rate: float, weights: Sequence[float], max_rate: float) -> tuple[float, ...]:
    """Per-block rates proportional to ``weights``, none above ``max_rate``, with mean exactly ``mean_rate``.

    Water-filling: blocks whose share would exceed ``max_rate`` are clipped to it and the rest of the total
    is spread over the others in proportion to their weights, until nothing exceeds the cap (clipping only
    raises the others' share, so a block over the cap once stays over it).
    """
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    total = mean_rate * len(weights)
    clipped: set[int] = set()
    while True:
        free = [i for i in range(len(weights)) if i not in clipped]
        weight = sum(weights[i] for i in free)
        scale = (total - max_rate * len(clipped)) / weight if weight else 0.0
        over = {i for i in free if scale * weights[i] > max_rate}
        if not over:
            return tuple(max_rate if i in clipped else scale * weights[i] for i in range(len(weights)))
        clipped |= over


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
