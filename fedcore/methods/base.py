"""The Planner protocol and the facts planners work from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fedcore.core.plan import LayerPlan


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows about a connected client (reported by its info query)."""

    node_id: int
    partition_id: int
    num_examples: int = 0
    #: device profile from the SuperNode's node config or measured (memory budget, speed...)
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientResult:
    """What a client's round produced, as planners see it (for online adaptation)."""

    partition_id: int
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)


class Planner(Protocol):
    def plan(self, round_number: int, clients: list[ClientInfo]) -> dict[int, LayerPlan]:
        """One plan per client, keyed by node id."""
        ...

    def payload(self, node_id: int, global_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors this client receives with its plan (every tunable parameter its model holds)."""
        ...

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        """Learn from the round's outcome (no-op for static planners)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state, for logs and checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpointed state_dict."""
        ...
