"""Bounding one client's influence on the aggregate: its weight, and the size of its update.

A client's statements cannot be verified, so the server bounds what they can buy (this project's
defences, after the norm bounding and median-relative clipping of the robust-FL literature, e.g. FLAME):

- weight: FedAvg's, the client's number of training examples, at most its partition's size. Where the
  server partitions a shared dataset it counts that size itself, and an honest federation keeps exactly
  FedAvg's weights; where it cannot (a node's own data) the size is the node's start-up statement, and
  such a weight is also at most ``cap`` x the round's median weight (``round.weight-cap``). A step-counted
  round touches only steps x batch size examples, but the weight stays the dataset size, as in FedAvg:
  bounding it by the examples touched gives every client of a step-counted plan the same weight, and
  under label skew the small one-class clients then outvote the rest (``docs/research/client-weights.md``);
- size: per layer group, over the clients that changed that group, no update is longer than
  ``factor`` x the median update norm (``round.clip-factor``); a longer one is scaled down to it;
- size of a sole contributor's update (a block only one client trained: LEFF windows, blocks the others
  dropped): no median of its own exists, so it is bounded by the other clients' updates of the same kind
  of group (``block``, ``embed``, ``head``) per coordinate: at most ``factor`` x sqrt(n_g) x R, where n_g
  is the group's parameter count and R the median over the other clients of their median RMS
  (norm / sqrt(parameters)) over the groups of that kind they changed (any kind if none of that kind).
  Its effect on the global group is then at most that norm, since it alone sets the group's aggregate.
  A round whose only sound reply is this one has nothing to compare with and is not bounded.

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
    """No weight the server could not check above ``cap`` x the round's (lower) median weight (0 = off)."""
    if not updates or not cap:
        return updates
    limit = cap * statistics.median_low(u.weight for u in updates)
    return [u if u.weight_checked else replace(u, weight=min(u.weight, limit)) for u in updates]


def group_norms(update: dict[str, torch.Tensor], group_of: Callable[[str], str]) -> dict[str, float]:
    """L2 norm of one client's update per layer group (in fp64: 1e30 entries do not overflow)."""
    squares: dict[str, float] = {}
    for name, tensor in update.items():
        group = group_of(name)
        squares[group] = squares.get(group, 0.0) + float(tensor.double().pow(2).sum())
    return {group: math.sqrt(total) for group, total in squares.items()}


def _kind(group: str) -> str:
    """The kind of a layer group: 'block' for 'block.3'."""
    return group.split(".")[0]


def _rms_by_kind(norms: dict[str, float], sizes: dict[str, int]) -> dict[str, float]:
    """One client's median per-coordinate RMS over the groups of each kind it changed."""
    by_kind: dict[str, list[float]] = {}
    for group, norm in norms.items():
        if norm > 0:
            by_kind.setdefault(_kind(group), []).append(norm / math.sqrt(sizes[group]))
    return {kind: statistics.median_low(values) for kind, values in by_kind.items()}


def _sole_limit(group: str, size: int, others: list[dict[str, float]], factor: float) -> float:
    """factor x sqrt(size) x the others' median RMS of the group's kind (of any kind if none has it)."""
    kind = _kind(group)
    same = [rms[kind] for rms in others if kind in rms]
    references = same or [statistics.median_low(rms.values()) for rms in others if rms]
    if not references:
        return math.inf
    return factor * math.sqrt(size) * statistics.median_low(references)


def clip_updates(
    updates: list[ClientUpdate], group_of: Callable[[str], str], factor: float
) -> tuple[list[ClientUpdate], list[float]]:
    """Scale each client's update of each group to at most ``factor`` x the group's median norm, or for a
    group only one client changed, to the bound its kind sets (the module's rule; ``factor`` 0 = off).

    The median is over the clients that changed the group: a client that skipped a block in every step
    (layer dropout) uploads zeros for it, which must not make the others' updates outliers.

    Returns the clipped updates and, per client, the smallest scale applied (1.0 = untouched).
    """
    if not factor:
        return updates, [1.0] * len(updates)
    norms = [group_norms(u.update, group_of) for u in updates]
    sizes: dict[str, int] = {}
    for client in updates:
        for name, tensor in client.update.items():
            sizes[group_of(name)] = sizes.get(group_of(name), 0) + tensor.numel()
    rms = [_rms_by_kind(client_norms, sizes) for client_norms in norms]
    movers: dict[str, list[int]] = {}
    for index, client_norms in enumerate(norms):
        for group, norm in client_norms.items():
            if norm > 0:
                movers.setdefault(group, []).append(index)
    limits: dict[tuple[int, str], float] = {}
    for group, indices in movers.items():
        if len(indices) > 1:
            shared = factor * statistics.median_low(norms[i][group] for i in indices)
            limits.update({(i, group): shared for i in indices})
        else:
            (sole,) = indices
            others = [rms[i] for i in range(len(updates)) if i != sole]
            limits[sole, group] = _sole_limit(group, sizes[group], others, factor)
    clipped, scales = [], []
    for index, (client, client_norms) in enumerate(zip(updates, norms, strict=True)):
        scale = {
            g: limits[index, g] / norm
            for g, norm in client_norms.items()
            if norm > limits.get((index, g), math.inf)
        }
        tensors = {
            name: (t.double() * scale[group_of(name)]).to(t.dtype) if group_of(name) in scale else t
            for name, t in client.update.items()
        }
        clipped.append(replace(client, update=tensors))
        scales.append(min(scale.values(), default=1.0))
    return clipped, scales
