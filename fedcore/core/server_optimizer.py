"""What the server does with a round's aggregated per-parameter deltas.

``MeanDelta`` adds them as they are: FedAvg's step, and the one fedlayer's runs take by default.
``FedAdam`` is the adaptive server optimiser of Reddi et al. (2021, "Adaptive Federated Optimization"),
applied per parameter: under layer-wise methods a round updates only some parameters, so moments exist and
advance only for parameters some client has updated, and each parameter's bias correction counts its own
updates (this project's reading of FedAdam for partial rounds; the paper updates every parameter every
round). An optimiser's state is a flat dict of tensors, so a checkpoint stores and hashes it like the
global state and a resumed run continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from fedcore.core.aggregate import apply_deltas


class ServerOptimizer(Protocol):
    """Turns the current global state and a round's aggregated deltas (fp64) into the next global state.

    Parameters without a delta must keep their tensor object (nobody trained them this round).
    """

    def step(
        self, global_state: Mapping[str, torch.Tensor], deltas: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything later steps depend on, as named tensors (the caller may save them)."""
        ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Continue from a ``state_dict()``; raises ValueError for a state this optimiser cannot have made."""
        ...


class MeanDelta:
    """global + aggregated delta: FedAvg's server step, which keeps no state."""

    def step(
        self, global_state: Mapping[str, torch.Tensor], deltas: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return apply_deltas(global_state, deltas)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(
                f"MeanDelta keeps no state, but got {len(state)} tensors ({next(iter(state))} ...)"
            )


#: FedAdam's state_dict keys: ``<part>/<parameter name>`` for each part of a parameter's moments
FIRST, SECOND, COUNT = "first", "second", "count"


class FedAdam:
    """Adam on the aggregated delta as a pseudo-gradient, with moments per updated parameter."""

    def __init__(
        self, lr: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if lr <= 0 or tau <= 0 or not (0 <= beta_1 < 1 and 0 <= beta_2 < 1):
            raise ValueError(
                f"FedAdam needs lr > 0, tau > 0 and betas in [0, 1): {lr=} {tau=} {beta_1=} {beta_2=}"
            )
        self.lr, self.beta_1, self.beta_2, self.tau = lr, beta_1, beta_2, tau
        #: per parameter: first moment, second moment (fp64) and the number of rounds it was updated in
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def step(
        self, global_state: Mapping[str, torch.Tensor], deltas: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        steps = {}
        for name, delta in deltas.items():
            first, second, count = self.moments.get(
                name, (torch.zeros_like(delta), torch.zeros_like(delta), 0)
            )
            first = self.beta_1 * first + (1 - self.beta_1) * delta
            second = self.beta_2 * second + (1 - self.beta_2) * delta.square()
            count += 1
            self.moments[name] = (first, second, count)
            corrected = first / (1 - self.beta_1**count)
            scale = (second / (1 - self.beta_2**count)).sqrt() + self.tau
            steps[name] = self.lr * corrected / scale
        return apply_deltas(global_state, steps)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Per updated parameter: ``first/<name>``, ``second/<name>`` and ``count/<name>`` (int64 scalar)."""
        state = {}
        for name, (first, second, count) in self.moments.items():
            state[f"{FIRST}/{name}"] = first
            state[f"{SECOND}/{name}"] = second
            state[f"{COUNT}/{name}"] = torch.tensor(count, dtype=torch.int64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        parts: dict[str, dict[str, torch.Tensor]] = {FIRST: {}, SECOND: {}, COUNT: {}}
        for key, tensor in state.items():
            part, _, name = key.partition("/")
            if part not in parts or not name:
                raise ValueError(
                    f"FedAdam's state has no key like {key!r} (expected first/, second/, count/)"
                )
            parts[part][name] = tensor
        names = set(parts[FIRST])
        if set(parts[SECOND]) != names or set(parts[COUNT]) != names:
            raise ValueError("FedAdam's state lacks a first moment, second moment or count of some parameter")
        moments = {}
        for name in sorted(names):
            first, second, count = parts[FIRST][name], parts[SECOND][name], parts[COUNT][name]
            if first.shape != second.shape or count.shape != () or count.is_floating_point() or count < 1:
                raise ValueError(f"FedAdam's state of {name} is malformed (shapes or count)")
            moments[name] = (first, second, int(count))
        self.moments = moments
