"""How the all-layers planner picks each client's layer dropout: the run's fixed configuration, or a
policy that learns from the round's results (DropPEFT's bandit, ``fedcore/methods/droppeft``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fedcore.mechanisms.layer_dropout import DropConfig
from fedcore.methods.base import ClientInfo, ClientResult


@dataclass(frozen=True)
class DropChoice:
    """One client's dropout for one round, and the probe examples its reward needs (0 = no probe)."""

    drop: DropConfig | None
    probe_examples: int = 0


class DropPolicy(Protocol):
    def choose(self, clients: list[ClientInfo]) -> dict[int, DropChoice]:
        """This round's choice for each picked client, keyed by partition id."""
        ...

    def observe(self, results: list[ClientResult]) -> None:
        """Learn from the round's results."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedDrop:
    """The same dropout for every client and round (``drop.mode=fixed``), or none."""

    def __init__(self, drop: DropConfig | None) -> None:
        self.drop = drop

    def choose(self, clients: list[ClientInfo]) -> dict[int, DropChoice]:
        return {client.partition_id: DropChoice(self.drop) for client in clients}

    def observe(self, results: list[ClientResult]) -> None:
        """A fixed configuration learns nothing."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
