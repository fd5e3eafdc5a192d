"""Personalised transformer layer sharing (PTLS): some blocks stay on the client, the rest are shared.

DropPEFT chooses personal layers by a gradient-norm criterion. This project's version: after local
training, the client ranks the blocks it trained by the norm of their parameter update in the round and
keeps the top fraction personal. Personal blocks are never uploaded and, on that client, never
overwritten by the global model. The client executor stores them between rounds under global names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from fedcore.core.layers import block_of_group


def group_update_norms(
    update: Mapping[str, torch.Tensor], group_of: Callable[[str], str]
) -> dict[str, float]:
    """L2 norm of the update of each block group (the head is always shared, so it is not ranked)."""
    squared: dict[str, float] = {}
    for name, delta in update.items():
        group = group_of(name)
        if block_of_group(group) is not None:
            squared[group] = squared.get(group, 0.0) + float(delta.double().pow(2).sum())
    return {group: math.sqrt(value) for group, value in squared.items()}


def choose_personal_groups(norms: Mapping[str, float], fraction: float) -> list[str]:
    """The ceil(fraction * n) block groups with the largest update norms (ties: lower block first)."""
    if fraction <= 0 or not norms:
        return []
    count = min(len(norms), math.ceil(fraction * len(norms)))
    ranked = sorted(norms, key=lambda g: (-norms[g], block_of_group(g)))
    return sorted(ranked[:count], key=block_of_group)


def keep_personal(
    model: nn.Module, update: Mapping[str, torch.Tensor], group_of: Callable[[str], str], fraction: float
) -> tuple[set[str], dict[str, torch.Tensor]]:
    """After training: the block groups kept personal and their new values (CPU copies, model names)."""
    keep = set(choose_personal_groups(group_update_norms(update, group_of), fraction))
    params = dict(model.named_parameters())
    kept = {n: params[n].detach().cpu().clone() for n in update if group_of(n) in keep}
    return keep, kept


def next_personal_state(
    stored: Mapping[str, torch.Tensor],
    kept: Mapping[str, torch.Tensor],
    trained_groups: Sequence[str],
    group_of: Callable[[str], str],
) -> dict[str, torch.Tensor]:
    """Blocks trained this round are personal only if kept now; untrained ones keep their personal value."""
    trained = set(trained_groups)
    return {**{n: t for n, t in stored.items() if group_of(n) not in trained}, **kept}


def shared_update(
    update: Mapping[str, torch.Tensor],
    keep: set[str],
    group_of: Callable[[str], str],
    personal: Mapping[str, torch.Tensor],
    received: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The update of every group not kept personal, relative to the global value received.

    Where training started from a personal value, the upload still measures from the global one, so the
    aggregate is the example-weighted mean of the clients' models for each shared parameter.
    """
    return {
        name: delta + (personal[name] - received[name] if name in personal else 0.0)
        for name, delta in update.items()
        if group_of(name) not in keep
    }
