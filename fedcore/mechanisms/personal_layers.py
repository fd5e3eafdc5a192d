"""Personalised transformer layer sharing (PTLS): some blocks stay on the client, the rest are shared.

DropPEFT chooses personal layers by a gradient-norm criterion. This project's version: after local
training, the client ranks the blocks it trained by the norm of their parameter update in the round and
keeps the top fraction personal. Personal blocks are never uploaded and, on that client, never
overwritten by the global model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch


def group_update_norms(
    update: Mapping[str, torch.Tensor], group_of: Callable[[str], str]
) -> dict[str, float]:
    """L2 norm of the update of each block group (the head is always shared, so it is not ranked)."""
    squared: dict[str, float] = {}
    for name, delta in update.items():
        group = group_of(name)
        if group.startswith("block."):
            squared[group] = squared.get(group, 0.0) + float(delta.double().pow(2).sum())
    return {group: math.sqrt(value) for group, value in squared.items()}


def choose_personal_groups(norms: Mapping[str, float], fraction: float) -> list[str]:
    """The ceil(fraction * n) block groups with the largest update norms (ties: lower block first)."""
    if fraction <= 0 or not norms:
        return []
    count = min(len(norms), math.ceil(fraction * len(norms)))
    ranked = sorted(norms, key=lambda g: (-norms[g], int(g.split(".")[1])))
    return sorted(ranked[:count], key=lambda g: int(g.split(".")[1]))
