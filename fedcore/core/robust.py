"""Bounding one client's influence on the aggregate: its weight, and the size of its update.

A client's statements cannot be verified, so the server bounds what they can buy (this project's
defences, after the norm bounding and median-relative clipping of the robust-FL literature, e.g. FLAME):

- weight: FedAvg's, the client's number of training examples, at most its partition size stated at
  start-up, then at most ``cap`` x the round's median weight (``round.weight-cap``). A step-counted
  round touches only steps x batch size examples, but the weight stays the dataset size, as in FedAvg:
  bounding it by the examples touched gives every client of a step-counted plan the same weight, and
  under label skew the small one-class clients then outvote the rest (``docs/research/client-weights.md``);
- size: per layer group, over the clients that changed that group, no update is longer than
  ``factor`` x the median update norm (``round.clip-factor``); a longer one is scaled down to it.

Medians are the lower median, so with two clients the smaller value is the reference: one of two clients
can never make the other's update (or weight) the outlier.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch

from fedcore.core.aggregate import ClientUpdate


def stated_weight(stated: int, partition_size: int) -> int:
    """The client's training examples as stated, at most its start-up partition size (0 = not stated)."""
    return min(stated, partition_size) if partition_size else stated


def cap_weights(updates: list[ClientUpdate], cap: float) -> list[ClientUpdate]:
    """No weight above ``cap`` x the round's (lower) median weight (0 = off)."""
    if not updates or not cap:
        return updates
    limit = cap * statistics.median_low(u.weight for u in updates)
    return [replace(u, weight=min(u.weight, limit)) for u in updates]


def group_norms(update: dict[str, torch.Tensor], group_of: Callable[[str], str]) -> dict[str, float]:
    """L2 norm of one client's update per layer group (in fp64: 1e30 entries do not overflow)."""
    squares: dict[str, float] = {}
    for name, tensor in update.items():
        group = group_of(name)
        squares[group] = squares.get(group, 0.0) + float(tensor.double().pow(2).sum())
    return {group: math.sqrt(total) for group, total in squares.items()}


def clip_to_median(
    updates: list[ClientUpdate], group_of: Callable[[str], str], factor: float
) -> tuple[list[ClientUpdate], list[float]]:
    """Scale each client's update of each group to at most ``factor`` x the group's median norm (0 = off).

    The median is over the clients that changed the group: a client that skipped a block in every step
    (layer dropout) uploads zeros for it, which must not make the others' updates outliers.

    Returns the clipped updates and, per client, the smallest scale applied (1.0 = untouched).
    """
    if not factor:
        return updates, [1.0] * len(updates)
    norms = [group_norms(u.update, group_of) for u in updates]
    moved: dict[str, list[float]] = {}
    for client_norms in norms:
        for group, norm in client_norms.items():
            if norm > 0:
                moved.setdefault(group, []).append(norm)
    limits = {group: factor * statistics.median_low(values) for group, values in moved.items()}
    clipped, scales = [], []
    for client, client_norms in zip(updates, norms, strict=True):
        scale = {g: limits[g] / norm for g, norm in client_norms.items() if norm > limits.get(g, math.inf)}
        tensors = {
            name: (t.double() * scale[group_of(name)]).to(t.dtype) if group_of(name) in scale else t
            for name, t in client.update.items()
        }
        clipped.append(replace(client, update=tensors))
        scales.append(min(scale.values(), default=1.0))
    return clipped, scales
