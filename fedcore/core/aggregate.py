"""Layer-wise aggregation: each parameter is combined over only the clients that trained and uploaded it.

The default combiner is the weighted mean, weights renormalised per parameter over its contributors, as
LEFF prescribes for layers; FedAvg is the special case where every client uploads everything. The robust
combiners (``round.aggregator``) take, per parameter and coordinate, the median or the trimmed mean of
the contributors' deltas, unweighted (as Flower's whole-model FedMedian and FedTrimmedAvg do). Parameters
no client uploaded keep their previous tensor object, so they stay bit-identical. Every reply is validated
before it can touch the aggregate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fedcore.core.aggregators import Aggregator

#: share of the contributors trimmed at each end by the trimmed mean (at least one from 3 contributors on)
TRIM_FRACTION = 0.2


class UpdateRejected(ValueError):
    """A client's reply cannot be aggregated; the message is the reason recorded in the run log."""


@dataclass(frozen=True)
class ClientUpdate:
    node_id: int
    #: aggregation weight: examples, bounded by what the server knows (fedcore.core.robust)
    weight: float
    update: dict[str, torch.Tensor]
    #: the weight is bounded by the server's own count of the client's data, so no cap is needed
    weight_checked: bool = False


def validate_update(
    update: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    group_of: Callable[[str], str],
    dtype: torch.dtype,
) -> None:
    """Refuse anything that could poison the aggregate; a client may omit whole groups (personal layers).

    ``update`` holds the tensors as they travelled: each must have the wire dtype the run sends
    (``round.wire-dtype``), checked before anything converts it.
    """
    if not update:
        raise UpdateRejected("empty update")
    unexpected = sorted(set(update) - set(expected))
    if unexpected:
        raise UpdateRejected(f"unexpected parameters for this plan: {unexpected[:3]}")
    groups_sent = {group_of(name) for name in update}
    partial = sorted({group_of(n) for n in expected if group_of(n) in groups_sent and n not in update})
    if partial:
        raise UpdateRejected(f"groups uploaded only in part: {partial[:3]}")
    for name, tensor in update.items():
        if tensor.dtype != dtype:
            raise UpdateRejected(f"{name}: dtype {tensor.dtype}, but this run's wire dtype is {dtype}")
        if tensor.shape != expected[name]:
            raise UpdateRejected(f"{name}: shape {tuple(tensor.shape)} != expected {tuple(expected[name])}")
        if not torch.isfinite(tensor).all():
            raise UpdateRejected(f"{name}: contains NaN or Inf")


def trim_count(contributors: int, aggregator: Aggregator) -> int:
    """Values dropped at each end of every coordinate: the median keeps the middle one or two."""
    if aggregator == "median":
        return (contributors - 1) // 2
    if aggregator == "trimmed-mean" and contributors >= 3:
        return max(1, int(TRIM_FRACTION * contributors))
    return 0


def combine(deltas: list[torch.Tensor], weights: list[float], aggregator: Aggregator) -> torch.Tensor:
    """One parameter's aggregate delta (fp64) from its contributors' deltas."""
    if aggregator == "mean":
        total = sum(weights)
        return sum(d.double() * (w / total) for d, w in zip(deltas, weights, strict=True))
    trim = trim_count(len(deltas), aggregator)
    ordered = torch.stack([d.double() for d in deltas]).sort(dim=0).values
    return ordered[trim : len(deltas) - trim].mean(dim=0)


def aggregate_deltas(updates: list[ClientUpdate], aggregator: Aggregator = "mean") -> dict[str, torch.Tensor]:
    """Each uploaded parameter's combined delta (fp64), over the clients that sent it."""
    contributors: dict[str, list[ClientUpdate]] = {}
    for client in updates:
        for name in client.update:
            contributors.setdefault(name, []).append(client)
    return {
        name: combine([c.update[name] for c in clients], [c.weight for c in clients], aggregator)
        for name, clients in contributors.items()
    }


def apply_deltas(
    global_state: Mapping[str, torch.Tensor], deltas: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Old value + delta for every parameter with a delta; the others keep their tensor object."""
    new_state = dict(global_state)
    for name, delta in deltas.items():
        new_state[name] = (global_state[name].double() + delta).to(global_state[name].dtype)
    return new_state


def aggregate_layerwise(
    global_state: Mapping[str, torch.Tensor], updates: list[ClientUpdate], aggregator: Aggregator = "mean"
) -> dict[str, torch.Tensor]:
    """New global state: old value + the combined updates of the clients that sent each parameter."""
    return apply_deltas(global_state, aggregate_deltas(updates, aggregator))
