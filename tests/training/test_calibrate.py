"""A node's start-up measurement on the run's model, and the profile it gives (stated values win)."""

from __future__ import annotations

from pathlib import Path

import pytest

from client_app.info import node_profile
from fedcore.core.devices import PROFILES, Calibration
from fedcore.model import build_model
from fedcore.training import calibrate as calibration
from fedcore.training.calibrate import calibrate
from tests.conftest import tiny_run_config


def test_calibration_measures_speed_and_what_a_block_costs_at_the_runs_batch(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    small = calibrate(tiny_run_config(tiny_models["bert"], tmp_path, **{"train.batch-size": 2}))
    large = calibrate(tiny_run_config(tiny_models["bert"], tmp_path, **{"train.batch-size": 32}))
    model, _ = build_model(tiny_run_config(tiny_models["bert"], tmp_path), num_labels=2)
    assert small.model_mb == pytest.approx(sum(p.numel() * 4 for p in model.parameters()) / 2**20)
    assert small.speed > 0 and small.free_mb > 0
    assert large.block_mb > 4 * small.block_mb > 0, "a block's activations grow with the batch"


def test_a_short_step_is_timed_over_enough_steps_to_outlast_scheduler_noise(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a clock where every step takes 10 ms: 3 steps are enough without a minimum, 0.3 s takes 30."""
    steps = []
    step = calibration._step
    monkeypatch.setattr(calibration, "_step", lambda *args: steps.append(1) or step(*args))
    monkeypatch.setattr(calibration.time, "perf_counter", lambda: len(steps) * 0.01)
    monkeypatch.setattr(calibration, "MIN_TIMED_S", 0.0)
    calibrate(tiny_run_config(tiny_models["bert"], tmp_path), steps=3)
    assert len(steps) == 1 + 3, "a warm-up step and the steps asked for"
    steps.clear()
    monkeypatch.setattr(calibration, "MIN_TIMED_S", 0.3)
    calibrate(tiny_run_config(tiny_models["bert"], tmp_path), steps=3)
    assert len(steps) == 1 + 30, "10 ms steps are repeated until 0.3 s have passed"


def test_stated_values_win_over_measured_ones_and_memory_sets_the_blocks_that_fit() -> None:
    measured = Calibration(speed=0.8, free_mb=4000.0, model_mb=1000.0, block_mb=100.0)
    profile = measured.profile({})
    assert (profile.name, profile.speed, profile.memory_mb, profile.memory_blocks) == (
        "measured",
        0.8,
        4000,
        30,
    )
    stated = measured.profile({"speed": 0.1, "memory-mb": 1250})
    assert (stated.speed, stated.memory_mb, stated.memory_blocks) == (0.1, 1250, 2)
    assert measured.profile({"memory-mb": 900}).memory_blocks == 1, "at least one block, however small"


def test_profiles_cycle_only_in_simulation_and_a_deployed_node_measures_itself(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path)
    claim = {"partition-id": 2, "num-partitions": 3}
    assert node_profile(2, claim, cfg, simulated=True) == PROFILES["jetson-orin"]
    assert node_profile(2, {**claim, "device": "cpu-box"}, cfg, simulated=False) == PROFILES["cpu-box"]
    deployed = node_profile(2, {**claim, "memory-mb": 1e6}, cfg, simulated=False)
    assert deployed.name == "measured" and deployed.memory_mb == 1e6 and deployed.memory_blocks > 4
