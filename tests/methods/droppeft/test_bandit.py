"""Dropout-configuration bandit: UCB convergence, pruning, drift, exact resumption.

The server relies on these properties: the bandit settles on each device's fastest configuration, never
strands a device without an arm, adapts when a device's speed changes, and continues identically after a
restart from its JSON state.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from fedcore.mechanisms.layer_dropout import DropConfig
from fedcore.methods.droppeft.bandit import DropoutBandit, arm_grid, progress_reward

GRID = arm_grid([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], ["uniform", "incremental"])


def _arm_rows(bandit: DropoutBandit, device: str) -> dict[str, dict[str, Any]]:
    """Per arm label: pulls, discounted count and pruned flag of one device, read from the bandit's state."""
    state = bandit.state_dict()
    stats = state["devices"].get(device)
    return {
        label: {
            "count": stats["pulls"][i] if stats else 0,
            "effective_count": stats["counts"][i] if stats else 0.0,
            "pruned": stats["pruned"][i] if stats else False,
        }
        for i, label in enumerate(state["arms"])
    }


def _means(num_arms: int, best: int) -> np.ndarray:
    """Arm reward means spread over 0.2-0.8 with one clearly best arm at 1.0."""
    means = np.linspace(0.2, 0.8, num_arms)
    means[best] = 1.0
    return means


def _play(
    bandit: DropoutBandit,
    device: str,
    means: np.ndarray,
    rng: np.random.Generator,
    steps: int,
    sd: float = 0.1,
) -> list[int]:
    """Let the bandit choose `steps` times with Gaussian rewards; return the chosen arm indices."""
    arms = list(bandit.arms)
    chosen = []
    for _ in range(steps):
        i = arms.index(bandit.select(device))
        bandit.update(device, arms[i], float(rng.normal(means[i], sd)))
        chosen.append(i)
    return chosen


def test_arm_grid_has_rate_zero_once_in_deterministic_order() -> None:
    assert len(GRID) == 13
    assert GRID[:3] == [
        DropConfig(0.0, "uniform"),
        DropConfig(0.1, "uniform"),
        DropConfig(0.1, "incremental"),
    ]
    assert sum(arm.mean_rate == 0.0 for arm in GRID) == 1
    assert arm_grid([0.2, 0.0], ["incremental"]) == [
        DropConfig(0.2, "incremental"),
        DropConfig(0.0, "uniform"),
    ]
    with pytest.raises(ValueError):
        arm_grid([0.1, 0.1], ["uniform"])
    with pytest.raises(ValueError):
        arm_grid([], ["uniform"])


@pytest.mark.parametrize("best", [0, 6, 12])
def test_converges_to_best_arm(best: int) -> None:
    bandit = DropoutBandit(GRID, exploration=0.1)
    chosen = _play(bandit, "jetson", _means(len(GRID), best), np.random.default_rng(0), steps=300)
    assert chosen.count(best) / len(chosen) > 0.6
    assert bandit.select("jetson") == GRID[best]
    assert _arm_rows(bandit, "jetson")[GRID[best].label]["count"] == chosen.count(best)


def test_each_device_converges_to_its_own_best_arm() -> None:
    bandit = DropoutBandit(GRID, exploration=0.1)
    rng = np.random.default_rng(1)
    best = {"fast": 2, "slow": 11}
    chosen: dict[str, list[int]] = {"fast": [], "slow": []}
    for _ in range(300):  # interleaved, as clients of both classes report in the same rounds
        for device, b in best.items():
            chosen[device] += _play(bandit, device, _means(len(GRID), b), rng, steps=1)
    for device, b in best.items():
        assert chosen[device].count(b) / 300 > 0.6
        assert bandit.select(device) == GRID[b]


def test_normalisation_makes_choices_independent_of_reward_scale() -> None:
    """Loss drop per second can be 1e-4 on one device and 10 on another; UCB must behave the same."""
    means = _means(len(GRID), 4)
    a, b = DropoutBandit(GRID, exploration=0.3), DropoutBandit(GRID, exploration=0.3)
    rng = np.random.default_rng(2)
    for _ in range(100):
        arm = a.select("d")
        assert b.select("d") == arm
        reward = float(rng.normal(means[GRID.index(arm)], 0.1))
        a.update("d", arm, reward)
        b.update("d", arm, reward * 2.0**-14)  # a power of two keeps the comparison exact


def test_clearly_bad_arms_are_pruned_and_never_selected_again() -> None:
    arms = GRID[:7]
    means = np.array([1.0, 0.9, 0.1, 0.0, 0.1, 0.0, 0.05])
    bandit = DropoutBandit(arms, exploration=0.2)
    rng = np.random.default_rng(3)
    for _ in range(2):  # every arm tried twice, e.g. by several clients of this class in the first rounds
        for i, arm in enumerate(arms):
            bandit.update("d", arm, float(rng.normal(means[i], 0.1)))
    for _ in range(200):
        pruned = {label for label, row in _arm_rows(bandit, "d").items() if row["pruned"]}
        assert bandit.select("d").label not in pruned
        _play(bandit, "d", means, rng, steps=1)
    summary = _arm_rows(bandit, "d")
    assert [summary[arm.label]["pruned"] for arm in arms] == [False, False, True, True, True, True, True]


def test_pruning_never_removes_every_arm() -> None:
    # exploration=0 makes the bounds collapse to the means: the most aggressive pruning possible.
    bandit = DropoutBandit(GRID, exploration=0.0)
    rng = np.random.default_rng(4)
    for _ in range(40):
        for arm in GRID:
            bandit.update("d", arm, float(rng.normal(0.5, 0.3)))
            assert sum(not row["pruned"] for row in _arm_rows(bandit, "d").values()) >= 1
    live = [label for label, row in _arm_rows(bandit, "d").items() if not row["pruned"]]
    assert len(live) == 1
    assert bandit.select("d").label == live[0]
    # Identical rewards give no evidence against any arm.
    flat = DropoutBandit(GRID, exploration=0.0)
    for arm in GRID * 3:
        flat.update("d", arm, 1.0)
    assert not any(row["pruned"] for row in _arm_rows(flat, "d").values())


def test_discounted_ucb_follows_a_switch_of_the_best_arm() -> None:
    arms = GRID[:4]
    before, after = np.array([1.0, 0.5, 0.3, 0.6]), np.array([0.5, 1.0, 0.3, 0.6])
    # Pruning is permanent, so a drifting device runs without it (see DropoutBandit docs).
    bandit = DropoutBandit(arms, exploration=0.2, discount=0.9, prune=False)
    rng = np.random.default_rng(5)
    first = _play(bandit, "d", before, rng, steps=200)
    assert first[-50:].count(0) > 25
    last = _play(bandit, "d", after, rng, steps=100)[-50:]
    assert last.count(1) > 25
    assert max(range(4), key=last.count) == 1


def test_discounted_count_underflow_makes_an_arm_due_for_a_retry() -> None:
    arms = GRID[:3]
    bandit = DropoutBandit(arms, discount=1e-200)
    for arm in [*arms, arms[1], arms[2]]:
        bandit.update("d", arm, 1.0 if arm == arms[0] else 0.0)
    assert _arm_rows(bandit, "d")[arms[0].label]["effective_count"] == 0.0
    assert bandit.select("d") == arms[0]


def test_state_round_trip_replays_identical_choices() -> None:
    bandit = DropoutBandit(GRID, exploration=0.3, discount=0.95, min_pulls_to_prune=2)
    rng = np.random.default_rng(6)
    means = {"a": _means(len(GRID), 3), "b": _means(len(GRID), 9)}
    for step in range(50):
        device = "ab"[step % 2]
        _play(bandit, device, means[device], rng, steps=1)
    state = json.loads(json.dumps(bandit.state_dict()))
    restored = DropoutBandit([DropConfig.from_label(label) for label in state["arms"]])
    restored.load_state_dict(state)
    loaded = DropoutBandit(GRID)
    loaded.load_state_dict(state)
    for step in range(30):
        device = "ab"[step % 2]
        arm = bandit.select(device)
        assert restored.select(device) == arm
        assert loaded.select(device) == arm
        reward = float(rng.normal(means[device][GRID.index(arm)], 0.1))
        for b in (bandit, restored, loaded):
            b.update(device, arm, reward)
    assert restored.state_dict() == bandit.state_dict() == loaded.state_dict()
    with pytest.raises(ValueError):
        DropoutBandit(GRID[:3]).load_state_dict(state)


@pytest.mark.parametrize("reward", [math.nan, math.inf, -math.inf])
def test_non_finite_reward_is_refused(reward: float) -> None:
    bandit = DropoutBandit(GRID)
    with pytest.raises(ValueError):
        bandit.update("d", GRID[0], reward)
    with pytest.raises(ValueError):
        bandit.update("d", DropConfig(0.9, "uniform"), 1.0)  # not one of the arms
    assert _arm_rows(bandit, "d")[GRID[0].label]["count"] == 0


def test_progress_reward() -> None:
    assert progress_reward(2.0, 1.0, 0.5) == pytest.approx(2 * math.log(2))
    assert progress_reward(1.0, 1.25, 2.0) == pytest.approx(math.log(0.8) / 2)  # a round that hurt: < 0
    # scale-free: halving the loss from 2.0 is worth as much as halving it from 0.2, unlike the plain drop
    assert progress_reward(0.2, 0.1, 1.0) == pytest.approx(progress_reward(2.0, 1.0, 1.0))
    assert math.isfinite(progress_reward(0.5, 0.0, 1.0)) and progress_reward(0.5, 0.0, 1.0) > 0
    for args in [
        (-1.0, 0.5, 1.0),
        (1.0, 0.5, 0.0),
        (1.0, 0.5, -1.0),
        (math.nan, 0.5, 1.0),
        (1.0, math.inf, 1.0),
        (1, 0, math.inf),
    ]:
        with pytest.raises(ValueError):
            progress_reward(*args)
