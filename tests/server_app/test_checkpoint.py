"""Checkpoints refuse damaged values and recover from a kill inside their own swap; metrics.jsonl
survives a torn last line; a run killed while saving its final model is completed by resume."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from fedcore.config import RunConfig
from fedcore.core.server_optimizer import FedAdam
from server_app.checkpoint import (
    CHECKPOINT_DIR,
    META_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from server_app.run_log import METRICS, REPORT, SUMMARY, RunDirError, RunLog, is_finished
from server_app.server_optimizer import make_server_optimizer
from tests.conftest import tiny_run_config
from tests.simulate import simulate


def checkpoint(round_number: int, fill: float = 0.5) -> Checkpoint:
    state = {"a.weight": torch.full((4, 3), fill), "b.bias": torch.arange(5, dtype=torch.float32)}
    return Checkpoint(round_number, state, {"bandit": {}}, 0.5, 12.0, RunConfig().to_flat(), {0: 11, 1: 12})


def saved(run_dir: Path, round_number: int = 1, fill: float = 0.5) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir, checkpoint(round_number, fill))
    return run_dir / CHECKPOINT_DIR


def test_a_saved_checkpoint_loads_bit_for_bit(tmp_path: Path) -> None:
    saved(tmp_path)
    loaded = load_checkpoint(tmp_path)
    expected = checkpoint(1)
    assert loaded.round == 1 and loaded.planner_state == expected.planner_state
    assert loaded.holders == {0: 11, 1: 12}
    assert all(torch.equal(loaded.global_state[k], v) for k, v in expected.global_state.items())


def overwrite_float(path: Path, old: float, new: float) -> None:
    """Replace the first stored float32 equal to ``old`` in place, as a disk or a hand edit would."""
    data = bytearray(path.read_bytes())
    at = data.rindex(struct.pack("<f", old))
    data[at : at + 4] = struct.pack("<f", new)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("new", [0.5000001, 3e38, float("nan")], ids=["flipped-bit", "3e38", "nan"])
def test_a_changed_value_is_refused_naming_the_file(tmp_path: Path, new: float) -> None:
    state_file = saved(tmp_path) / STATE_FILE
    overwrite_float(state_file, 0.5, new)
    with pytest.raises(CheckpointError, match="corrupt") as error:
        load_checkpoint(tmp_path)
    assert str(state_file) in str(error.value)


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 3e38], ids=["nan", "inf", "3e38"])
def test_unusable_values_are_refused_even_with_a_matching_hash(tmp_path: Path, fill: float) -> None:
    """A run that saved a diverged model must not resume it as if it were fine."""
    state_file = saved(tmp_path, fill=fill) / STATE_FILE
    with pytest.raises(CheckpointError, match="non-finite or overflowing values in a.weight") as error:
        load_checkpoint(tmp_path)
    assert str(state_file) in str(error.value)


@pytest.mark.parametrize("key", ["planner", "elapsed_s", "round"])
def test_a_missing_key_is_an_error_naming_the_file(tmp_path: Path, key: str) -> None:
    meta_file = saved(tmp_path) / META_FILE
    meta = json.loads(meta_file.read_text())
    del meta[key]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"lacks {key}") as error:
        load_checkpoint(tmp_path)
    assert str(meta_file) in str(error.value)


@pytest.mark.parametrize(
    ("key", "value"), [("round", 7), ("planner", {"bandit": {"x": 1}}), ("best_accuracy", 0.99)]
)
def test_an_edited_field_breaks_the_hash_and_is_refused_naming_the_file(
    tmp_path: Path, key: str, value: object
) -> None:
    """One flipped digit in the round would skip rounds; an edited planner state would crash the planner."""
    meta_file = saved(tmp_path) / META_FILE
    meta = json.loads(meta_file.read_text())
    meta[key] = value
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its hash") as error:
        load_checkpoint(tmp_path)
    assert str(meta_file) in str(error.value)


FEDADAM = RunConfig.from_flat({"server.optimizer": "fedadam", "server.lr": 0.05})


def fedadam_rounds(
    optimizer: FedAdam, state: dict[str, torch.Tensor], rounds: range
) -> dict[str, torch.Tensor]:
    """Partial rounds of fixed pseudo-random deltas: 'a.weight' every round, 'b.bias' every other."""
    for number in rounds:
        generator = torch.Generator().manual_seed(number)
        names = ["a.weight", "b.bias"] if number % 2 else ["a.weight"]
        deltas = {n: torch.randn(state[n].shape, generator=generator, dtype=torch.float64) for n in names}
        state = optimizer.step(state, deltas)
    return state


def test_a_fedadam_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    start = checkpoint(1).global_state
    uninterrupted = fedadam_rounds(make_server_optimizer(FEDADAM.server), start, range(1, 6))

    first = make_server_optimizer(FEDADAM.server)
    state = fedadam_rounds(first, start, range(1, 4))
    save_checkpoint(
        tmp_path,
        Checkpoint(3, state, {}, None, 1.0, FEDADAM.to_flat(), {}, first.state_dict()),
    )
    loaded = load_checkpoint(tmp_path)
    assert loaded.optimizer_state.keys() == first.state_dict().keys()
    assert all(torch.equal(loaded.optimizer_state[k], v) for k, v in first.state_dict().items())
    resumed = fedadam_rounds(restore_optimizer(tmp_path, loaded, FEDADAM), loaded.global_state, range(4, 6))
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in start)


def fedadam_checkpoint(run_dir: Path) -> Path:
    optimizer = make_server_optimizer(FEDADAM.server)
    state = fedadam_rounds(optimizer, checkpoint(1).global_state, range(1, 3))
    save_checkpoint(
        run_dir, Checkpoint(2, state, {}, None, 1.0, FEDADAM.to_flat(), {}, optimizer.state_dict())
    )
    return run_dir / CHECKPOINT_DIR / OPTIMIZER_FILE


def test_a_changed_optimizer_moment_is_refused_naming_the_file(tmp_path: Path) -> None:
    optimizer_file = fedadam_checkpoint(tmp_path)
    data = bytearray(optimizer_file.read_bytes())
    data[-3] ^= 1  # a bit of the last tensor's bytes
    optimizer_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as error:
        load_checkpoint(tmp_path)
    assert str(optimizer_file) in str(error.value)


def test_another_runs_optimizer_file_is_refused_as_mixed_files(tmp_path: Path) -> None:
    """An intact file of another checkpoint (a mean-step run's empty state) does not pass for this one's."""
    optimizer_file = fedadam_checkpoint(tmp_path)
    shutil.copy(saved(tmp_path / "plain") / OPTIMIZER_FILE, optimizer_file)
    with pytest.raises(CheckpointError, match="does not match") as error:
        load_checkpoint(tmp_path)
    assert str(optimizer_file) in str(error.value)


@pytest.mark.parametrize(
    ("made_with", "resumed_with"),
    [("fedadam", "mean"), ("mean", "fedadam")],
    ids=["adam->mean", "mean->adam"],
)
def test_resuming_with_another_server_optimizer_is_refused_naming_the_file(
    tmp_path: Path, made_with: str, resumed_with: str
) -> None:
    if made_with == "fedadam":
        optimizer_file = fedadam_checkpoint(tmp_path)
    else:
        optimizer_file = saved(tmp_path) / OPTIMIZER_FILE
    cfg = RunConfig.from_flat({"server.optimizer": resumed_with})
    with pytest.raises(CheckpointError, match=f"server.optimizer='{made_with}'") as error:
        restore_optimizer(tmp_path, load_checkpoint(tmp_path), cfg)
    assert str(optimizer_file) in str(error.value)


def test_an_optimizer_state_that_does_not_fit_the_optimizer_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    """A state the configured optimiser cannot have made (here FedAdam's moments under the mean step)."""
    fedadam_checkpoint(tmp_path)
    loaded = load_checkpoint(tmp_path)
    loaded.config["server.optimizer"] = "mean"
    with pytest.raises(CheckpointError, match="does not fit server.optimizer='mean'") as error:
        restore_optimizer(tmp_path, loaded, RunConfig())
    assert str(tmp_path / CHECKPOINT_DIR / OPTIMIZER_FILE) in str(error.value)


def test_a_checkpoint_of_an_older_format_is_refused_naming_the_file(tmp_path: Path) -> None:
    meta_file = saved(tmp_path) / META_FILE
    meta = json.loads(meta_file.read_text())
    meta["format"] = 3
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a fedlayer checkpoint of format 4") as error:
        load_checkpoint(tmp_path)
    assert str(meta_file) in str(error.value)


def test_a_run_is_finished_only_once_its_report_is_written(tmp_path: Path) -> None:
    """A kill after summary.json but before report.md leaves a run that resume completes, not refuses."""
    (tmp_path / SUMMARY).write_text("{}")
    assert not is_finished(tmp_path)
    (tmp_path / REPORT).write_text("# Run")
    assert is_finished(tmp_path)


def interrupted_swap(run_dir: Path, new_complete: bool) -> None:
    """The leftovers of a kill between replace_dir's renames while saving round 2 over round 1."""
    saved(run_dir, 1)
    os.replace(run_dir / CHECKPOINT_DIR, run_dir / f".{CHECKPOINT_DIR}.old")
    newer = saved(run_dir / "elsewhere", 2)
    if not new_complete:
        (newer / STATE_FILE).write_bytes((newer / STATE_FILE).read_bytes()[:-7])
    os.replace(newer, run_dir / f".{CHECKPOINT_DIR}.tmp")


@pytest.mark.parametrize(("new_complete", "expected_round"), [(True, 2), (False, 1)])
def test_a_kill_between_the_swaps_renames_is_recovered(
    tmp_path: Path, new_complete: bool, expected_round: int
) -> None:
    interrupted_swap(tmp_path, new_complete)
    with pytest.warns(UserWarning, match="recovered from"):
        assert load_checkpoint(tmp_path).round == expected_round
    assert (tmp_path / CHECKPOINT_DIR / META_FILE).is_file(), "the recovered copy is put back in place"
    assert load_checkpoint(tmp_path).round == expected_round


def test_no_complete_copy_is_no_checkpoint(tmp_path: Path) -> None:
    interrupted_swap(tmp_path, new_complete=False)
    shutil.rmtree(tmp_path / f".{CHECKPOINT_DIR}.old")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path: Path) -> None:
    rows = [{"kind": "global", "round": r, "accuracy": r / 10} for r in range(3)]
    metrics = tmp_path / METRICS
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"kind": "client", "rou')
    log = RunLog(tmp_path, {})
    with pytest.warns(UserWarning, match=f"{metrics}: dropped a torn last line"):
        log.truncate_after(1)
    log.close()
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == rows[:2]


def test_a_damaged_metrics_line_before_the_last_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text('{"round": 0}\n{"round": \n{"round": 1}\n')
    log = RunLog(tmp_path, {})
    with pytest.raises(RunDirError, match=f"{tmp_path / METRICS}: line 2"):
        log.truncate_after(1)
    log.close()


def test_a_run_killed_while_saving_its_final_model_is_completed_by_resume(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, rounds=1)
    run_dir = simulate(cfg, supernodes=2)
    finished = json.loads((run_dir / "summary.json").read_text())
    state_before = (run_dir / CHECKPOINT_DIR / STATE_FILE).read_bytes()
    # what a kill inside save_model leaves: a half-written model beside no model/ and no summary
    shutil.rmtree(run_dir / "model")
    (run_dir / "summary.json").unlink()
    (run_dir / ".model.tmp").mkdir()
    (run_dir / ".model.tmp" / "config.json").write_text("{")

    resume = RunConfig.from_flat({**cfg.to_flat(), "resume-from": str(run_dir)})
    assert simulate(resume, supernodes=2) == run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"] == finished["final"] and summary["rounds_completed"] == 1
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert not (run_dir / ".model.tmp").exists()
    assert (run_dir / CHECKPOINT_DIR / STATE_FILE).read_bytes() == state_before
    logged = [
        (row["kind"], row.get("round"), row.get("partition_id"))
        for row in map(json.loads, (run_dir / METRICS).read_text().splitlines())
        if row["kind"] != "node"  # each start records the nodes that joined it
    ]
    assert len(logged) == len(set(logged)) == 4, "round 0, two clients and round 1, each once"

    with pytest.raises(CheckpointError, match="already completed round 1 of rounds=1"):
        simulate(resume, supernodes=2)
