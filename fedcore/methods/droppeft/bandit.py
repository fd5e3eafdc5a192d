"""Server-side multi-armed bandit that picks a layer-dropout configuration per device (paper-inspired).

DropPEFT states that per-device dropout ratios matter and are assigned online by an exploration-exploitation
strategy. Everything else here is our choice (project notes, DropPEFT section): an arm is a (mean drop rate,
shape) pair, each device key has its own independent arm statistics, selection is UCB1 (or discounted UCB for
devices whose speed drifts), and the reward is training progress per second of that device's round.

This module is deterministic: the same updates in the same order give the same choices,
and `state_dict` captures all of it, so a restarted server continues exactly where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedcore.mechanisms.layer_dropout import DropConfig

STATE_VERSION = 1


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def arm_grid(rates: list[float], shapes: list[str]) -> list[DropConfig]:
    """All (rate, shape) arms in rate-major order; rate 0 appears once (as uniform) since no block drops."""
    if not rates or not shapes:
        raise ValueError("arm_grid needs at least one rate and one shape")
    if len(set(rates)) != len(rates) or len(set(shapes)) != len(shapes):
        raise ValueError(f"duplicate rates or shapes: {rates}, {shapes}")
    arms: list[DropConfig] = []
    for rate in rates:
        if rate == 0.0:
            arms.append(DropConfig(0.0, "uniform"))
            continue
        arms.extend(DropConfig(rate, shape) for shape in shapes)  # type: ignore[arg-type]
    return arms


@dataclass
class _DeviceStats:
    """Per-device arm statistics; `counts`/`sums` are discounted, `pulls` are the raw number of updates."""

    pulls: list[int]
    counts: list[float]
    sums: list[float]
    pruned: list[bool]
    low: float | None = None
    high: float | None = None
    updates: int = 0

    @classmethod
    def empty(cls, num_arms: int) -> _DeviceStats:
        return cls([0] * num_arms, [0.0] * num_arms, [0.0] * num_arms, [False] * num_arms)


class DropoutBandit:
    """UCB1 / discounted UCB over dropout configurations, with one independent arm set per device key.

    Rewards have an arbitrary scale (e.g. loss drop per second), so arm means are normalised per device into
    [0, 1] by the smallest and largest reward that device has ever reported before the exploration bonus is
    added; otherwise the bonus would be meaningless on a fast device and dominant on a slow one.

    `select` has no side effects: it returns the same arm until `update` is called for that device, so all
    clients sharing a device key in one round get the same configuration.

    Pruning is permanent. With `discount < 1` (non-stationary devices) an arm pruned early could never come
    back when it later becomes the best, so the DropPEFT planner prunes only when `discount == 1`.
    """

    def __init__(
        self,
        arms: list[DropConfig],
        *,
        exploration: float = 1.0,
        discount: float = 1.0,
        prune: bool = True,
        min_pulls_to_prune: int = 2,
    ) -> None:
        if not arms:
            raise ValueError("DropoutBandit needs at least one arm")
        if len(set(arms)) != len(arms):
            raise ValueError("duplicate arms")
        if not (math.isfinite(exploration) and exploration >= 0.0):
            raise ValueError(f"exploration must be finite and >= 0, got {exploration!r}")
        if not (0.0 < discount <= 1.0):
            raise ValueError(f"discount must be in (0, 1], got {discount!r}")
        if min_pulls_to_prune < 1:
            raise ValueError(f"min_pulls_to_prune must be >= 1, got {min_pulls_to_prune}")
        self._arms = tuple(arms)
        self._index = {arm: i for i, arm in enumerate(self._arms)}
        self.exploration = exploration
        self.discount = discount
        self.prune = prune
        self.min_pulls_to_prune = min_pulls_to_prune
        self._devices: dict[str, _DeviceStats] = {}

    @property
    def arms(self) -> tuple[DropConfig, ...]:
        return self._arms

    def _stats(self, device: str) -> _DeviceStats:
        if device not in self._devices:
            self._devices[device] = _DeviceStats.empty(len(self._arms))
        return self._devices[device]

    def _bounds(self, stats: _DeviceStats, i: int) -> tuple[float, float]:
        """Normalised mean and UCB1 radius exploration * sqrt(2 ln N / n_a), on discounted counts."""
        if stats.counts[i] <= 0.0:  # a long-unplayed arm's discounted count can underflow to zero
            return 0.5, math.inf
        assert stats.low is not None and stats.high is not None  # set by the update that made counts > 0
        mean = stats.sums[i] / stats.counts[i]
        normalised = 0.5 if stats.high == stats.low else (mean - stats.low) / (stats.high - stats.low)
        total = max(sum(stats.counts), 1.0)
        return normalised, self.exploration * math.sqrt(2.0 * math.log(total) / stats.counts[i])

    def select(self, device: str) -> DropConfig:
        """Untried unpruned arms first in grid order, then the highest UCB index (grid order breaks ties)."""
        stats = self._devices.get(device)
        if stats is None:
            return self._arms[0]
        live = [i for i in range(len(self._arms)) if not stats.pruned[i]]
        for i in live:
            if stats.pulls[i] == 0:
                return self._arms[i]
        best = max(live, key=lambda i: (sum(self._bounds(stats, i)), -i))
        return self._arms[best]

    def update(self, device: str, arm: DropConfig, reward: float) -> None:
        """Record the reward of `arm` on `device`, decay that device's statistics, then prune if enabled."""
        _check_finite("reward", reward)
        if arm not in self._index:
            raise ValueError(f"unknown arm {arm.label}")
        stats = self._stats(device)
        if self.discount < 1.0:
            stats.counts = [c * self.discount for c in stats.counts]
            stats.sums = [s * self.discount for s in stats.sums]
        i = self._index[arm]
        stats.pulls[i] += 1
        stats.counts[i] += 1.0
        stats.sums[i] += reward
        stats.low = reward if stats.low is None else min(stats.low, reward)
        stats.high = reward if stats.high is None else max(stats.high, reward)
        stats.updates += 1
        if self.prune:
            self._prune(stats)

    def _prune(self, stats: _DeviceStats) -> None:
        """Drop arms whose upper bound is below the best lower bound; the best-LCB arm always survives."""
        eligible = [
            i
            for i in range(len(self._arms))
            if not stats.pruned[i] and stats.pulls[i] >= self.min_pulls_to_prune
        ]
        if len(eligible) < 2:
            return
        bounds = {i: self._bounds(stats, i) for i in eligible}
        best_lower = max(mean - radius for mean, radius in bounds.values())
        for i, (mean, radius) in bounds.items():
            if mean + radius < best_lower:
                stats.pruned[i] = True

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot; floats survive JSON exactly, so a restored bandit replays exactly."""
        return {
            "version": STATE_VERSION,
            "arms": [arm.label for arm in self._arms],
            "exploration": self.exploration,
            "discount": self.discount,
            "prune": self.prune,
            "min_pulls_to_prune": self.min_pulls_to_prune,
            "devices": {
                device: {
                    "pulls": list(s.pulls),
                    "counts": list(s.counts),
                    "sums": list(s.sums),
                    "pruned": list(s.pruned),
                    "min": s.low,
                    "max": s.high,
                    "updates": s.updates,
                }
                for device, s in self._devices.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore statistics and hyperparameters; the arm list must match this bandit's, in order."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported bandit state version {state.get('version')!r}")
        labels = [arm.label for arm in self._arms]
        if list(state["arms"]) != labels:
            raise ValueError(f"state arms {state['arms']} do not match bandit arms {labels}")
        restored = DropoutBandit(
            list(self._arms),
            exploration=float(state["exploration"]),
            discount=float(state["discount"]),
            prune=bool(state["prune"]),
            min_pulls_to_prune=int(state["min_pulls_to_prune"]),
        )
        n = len(self._arms)
        for device, d in state["devices"].items():
            stats = _DeviceStats(
                pulls=[int(x) for x in d["pulls"]],
                counts=[float(x) for x in d["counts"]],
                sums=[float(x) for x in d["sums"]],
                pruned=[bool(x) for x in d["pruned"]],
                low=None if d["min"] is None else float(d["min"]),
                high=None if d["max"] is None else float(d["max"]),
                updates=int(d["updates"]),
            )
            if not all(len(v) == n for v in (stats.pulls, stats.counts, stats.sums, stats.pruned)):
                raise ValueError(f"state for device {device!r} does not have {n} arms")
            restored._devices[str(device)] = stats
        self.exploration = restored.exploration
        self.discount = restored.discount
        self.prune = restored.prune
        self.min_pulls_to_prune = restored.min_pulls_to_prune
        self._devices = restored._devices


#: losses below this count as this, so that a perfect probe does not make the log-ratio infinite
MIN_LOSS = 1e-6


def progress_reward(loss_before: float, loss_after: float, wall_time_s: float) -> float:
    """Log-ratio of the held-out loss (full model, before / after local training) per second of the
    device's round.

    Our choice of reward: it trades how much a configuration helps against how long it keeps the device
    busy, which is what time-to-accuracy rewards, and it can be negative when a round made the model worse.
    It is a ratio rather than the plain drop because the drop mostly measures where the round started (it
    tracks the loss before training; the log-ratio does not). Neither sees what an arm costs the global
    model (``docs/research/droppeft-rate-and-bandit.md``).
    """
    _check_finite("loss_before", loss_before)
    _check_finite("loss_after", loss_after)
    _check_finite("wall_time_s", wall_time_s)
    if loss_before < 0.0 or loss_after < 0.0:
        raise ValueError(f"losses must be >= 0, got {loss_before!r} and {loss_after!r}")
    if wall_time_s <= 0.0:
        raise ValueError(f"wall_time_s must be > 0, got {wall_time_s!r}")
    return math.log(max(loss_before, MIN_LOSS) / max(loss_after, MIN_LOSS)) / wall_time_s
