"""Optional TensorBoard event files: written per round when the extra is installed, one clear error if not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from server_app.tensorboard import TensorBoardMissing, open_tensorboard
from tests.conftest import tiny_run_config
from tests.simulate import simulate

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def test_off_by_default(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path)
    assert cfg.output.tensorboard is False
    assert open_tensorboard(cfg.output.tensorboard, tmp_path) is None


@pytest.mark.skipif(HAS_TENSORBOARD, reason="the tensorboard extra is installed")
def test_turning_it_on_without_the_extra_names_the_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TensorBoardMissing, match=r"output\.tensorboard=true .*fedlayer\[tensorboard\]"):
        open_tensorboard(True, tmp_path)


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="needs the tensorboard extra")
def test_every_evaluated_round_becomes_a_scalar_step(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_run_config(tiny_models["bert"], tmp_path, **{"output.tensorboard": True, "rounds": 2})
    run_dir = simulate(cfg, supernodes=2)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"accuracy", "loss", "round_wall_time_s"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("accuracy")] == [0, 1, 2]
    assert [event.step for event in events.Scalars("clients_ok")] == [0, 1, 2]
