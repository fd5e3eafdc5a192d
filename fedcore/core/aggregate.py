"""Layer-wise aggregation: each parameter is averaged over only the clients that trained and uploaded it.

Weights are the clients' example counts, renormalised per parameter over its contributors, as LEFF
prescribes for layers; FedAvg is the special case where every client uploads everything. Parameters no
client uploaded keep their previous tensor object, so they stay bit-identical. Every reply is validated
before it can touch the aggregate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


class UpdateRejected(ValueError):
    """A client's reply cannot be aggregated; the message is the reason recorded in the run log."""


@dataclass(frozen=True)
class ClientUpdate:
    node_id: int
    examples: int
    update: dict[str, torch.Tensor]


def validate_update(
    update: Mapping[str, torch.Tensor],
    examples: float,
    expected: Mapping[str, torch.Size],
    group_of: Callable[[str], str],
    *,
    max_examples: int = 10_000_000,
    max_norm: float = 0.0,
) -> None:
    """Refuse anything that could poison the aggregate; a client may omit whole groups (personal layers)."""
    if isinstance(examples, bool) or not isinstance(examples, (int, float)) or not math.isfinite(examples):
        raise UpdateRejected(f"example count is not a number: {examples!r}")
    if not 1 <= examples <= max_examples:
        raise UpdateRejected(f"absurd example count {examples} (allowed 1..{max_examples})")
    if not update:
        raise UpdateRejected("empty update")
    unexpected = sorted(set(update) - set(expected))
    if unexpected:
        raise UpdateRejected(f"unexpected parameters for this plan: {unexpected[:3]}")
    groups_sent = {group_of(name) for name in update}
    partial = sorted({group_of(n) for n in expected if group_of(n) in groups_sent and n not in update})
    if partial:
        raise UpdateRejected(f"groups uploaded only in part: {partial[:3]}")
    squared_norm = 0.0
    for name, tensor in update.items():
        if not torch.is_floating_point(tensor):
            raise UpdateRejected(f"{name}: dtype {tensor.dtype} is not floating point")
        if tensor.shape != expected[name]:
            raise UpdateRejected(f"{name}: shape {tuple(tensor.shape)} != expected {tuple(expected[name])}")
        if not torch.isfinite(tensor).all():
            raise UpdateRejected(f"{name}: contains NaN or Inf")
        squared_norm += float(tensor.double().pow(2).sum())
    if max_norm > 0 and math.sqrt(squared_norm) > max_norm:
        raise UpdateRejected(f"update norm {math.sqrt(squared_norm):.3g} exceeds the bound {max_norm}")


def aggregate_layerwise(
    global_state: Mapping[str, torch.Tensor], updates: list[ClientUpdate]
) -> dict[str, torch.Tensor]:
    """New global state: old value + example-weighted mean of the updates of the clients that sent it."""
    new_state = dict(global_state)
    contributors: dict[str, list[ClientUpdate]] = {}
    for client in updates:
        for name in client.update:
            contributors.setdefault(name, []).append(client)
    for name, clients in contributors.items():
        total = sum(c.examples for c in clients)
        mean_delta = sum(c.update[name].double() * (c.examples / total) for c in clients)
        new_state[name] = (global_state[name].double() + mean_delta).to(global_state[name].dtype)
    return new_state
