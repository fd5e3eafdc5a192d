"""Stochastic transformer layer dropout (STLD): each training step runs only a sampled subset of blocks.

Dropped blocks are removed from the model's block list for the duration of the forward pass, so they do
no forward or backward work and keep no activations; there is no masking or multiply-by-zero. The blocks
are the same module objects, so each keeps its own bookkeeping (layer index, attention type). Evaluation
never enters this context and always runs the full depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from fedcore.core.layers import find_blocks, swap_blocks


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
