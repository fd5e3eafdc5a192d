"""Experiment files: every committed one validates, bad input is refused naming the key, runs are named so
that their directory names parse back, and the dry run prints each run's resolved settings."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from benchmarks import run
from benchmarks.experiment import (
    EXPERIMENTS,
    ExperimentError,
    experiment_names,
    load_experiment,
    parse_run_name,
    run_name,
    to_run_config_arg,
)
from fedcore.config import RunConfig

_BASE = """
seeds = [0, 1]
[federation]
supernodes = 8
[overrides]
preset = "paper-cls"
[report]
kind = "testbed"
[variants.fedlora]
method = "fedlora"
[variants."leff-t1"]
method = "leff"
leff.temperature = 1.0
"""


def _write(tmp_path: Path, text: str, name: str = "demo") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", experiment_names())
def test_every_committed_experiment_validates(name: str) -> None:
    experiment = load_experiment(EXPERIMENTS / f"{name}.toml")
    assert experiment.name == name and experiment.variants and experiment.seeds


def test_variant_settings_win_over_the_preset_and_the_seed_comes_last(tmp_path: Path) -> None:
    experiment = load_experiment(_write(tmp_path, _BASE + "rounds = 3\n"))
    settings = experiment.run_config("leff-t1", 1)
    assert settings == {
        "preset": "paper-cls",
        "method": "leff",
        "leff.temperature": 1.0,
        "rounds": 3,
        "seed": 1,
    }
    cfg = RunConfig.from_flat(settings)
    assert (cfg.rounds, cfg.leff.temperature, cfg.seed) == (3, 1.0, 1)  # the preset's rounds are 20
    assert experiment.runs(seeds=[0, 1]) == [("fedlora", 0), ("leff-t1", 0), ("fedlora", 1), ("leff-t1", 1)]


def test_run_config_arg_is_what_flower_parses_back(tmp_path: Path) -> None:
    settings = {"preset": "paper-cls", "leff.temperature": 1.0, "eval.local": True, "rounds": 3, "x": "a'b"}
    assert parse_config_args([to_run_config_arg(settings)]) == settings


def test_a_bad_run_config_key_is_named_with_its_variant(tmp_path: Path) -> None:
    path = _write(tmp_path, _BASE + 'leff.windw = "random"\n')
    with pytest.raises(ExperimentError, match=r"variants\.leff-t1: .*leff\.windw"):
        load_experiment(path)


def test_an_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="unknown key 'varients'"):
        load_experiment(_write(tmp_path, _BASE + "[varients.x]\nmethod = 'fedavg'\n"))


def test_a_mistyped_federation_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match=r"federation\.supernodes: '8' is not a whole number"):
        load_experiment(_write(tmp_path, _BASE.replace("supernodes = 8", 'supernodes = "8"')))
    with pytest.raises(ExperimentError, match=r"unknown key 'federation\.nodes'"):
        load_experiment(_write(tmp_path, _BASE.replace("supernodes = 8", "nodes = 8")))


def test_seeds_must_be_whole_numbers(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="seeds: "):
        load_experiment(_write(tmp_path, _BASE.replace("seeds = [0, 1]", 'seeds = ["0"]')))


def test_a_testbed_report_needs_a_fedlora_variant(tmp_path: Path) -> None:
    text = _BASE.replace('[variants.fedlora]\nmethod = "fedlora"\n', "")
    with pytest.raises(ExperimentError, match="'fedlora' variant"):
        load_experiment(_write(tmp_path, text))


def test_an_unknown_variant_is_named(tmp_path: Path) -> None:
    experiment = load_experiment(_write(tmp_path, _BASE))
    with pytest.raises(ExperimentError, match="unknown variant 'leff-t2'; known: fedlora, leff-t1"):
        experiment.runs(["fedlora", "leff-t2"])


def test_run_names_parse_back_and_others_do_not() -> None:
    name = run_name("paper-cls-leff-windows", "leff-bf16-t0.1", 3)
    assert name == "paper-cls-leff-windows--leff-bf16-t0.1--seed3"
    assert parse_run_name(name) == ("paper-cls-leff-windows", "leff-bf16-t0.1", 3)
    for other in ("20261201-120000-fedlora-s0", "a--b--c", "a--b--seedx", "a--b--c--seed1"):
        assert parse_run_name(other) is None


def test_a_variant_name_with_the_separator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="must not contain '--'"):
        load_experiment(_write(tmp_path, _BASE + '[variants."a--b"]\nmethod = "fedavg"\n'))


def test_dry_run_prints_every_run_resolved_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("a dry run must not check out or run anything")

    monkeypatch.setattr(run, "worktree", refuse)
    monkeypatch.setattr(run, "simulate_run", refuse)
    path = _write(tmp_path, _BASE)
    assert run.main([str(path), "--variants", "leff-t1", "--seeds", "0,2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "demo--leff-t1--seed0" in out and "demo--leff-t1--seed2" in out and "fedlora--seed" not in out
    assert "leff.temperature = 1.0" in out and "rounds = 20" in out  # the variant's and the preset's


def test_the_runner_refuses_an_unknown_variant_and_bad_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, _BASE)
    with pytest.raises(SystemExit):
        run.main([str(path), "--variants", "nope", "--dry-run"])
    assert "unknown variant 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main([str(path), "--seeds", "0,one", "--dry-run"])
    assert "--seeds: '0,one'" in capsys.readouterr().err


def _fake_run(root: Path, name: str, method: str, accuracies: list[float], commit: str) -> None:
    """A finished run directory as the server writes it: global rows per round, one client row a round."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"method": method}))
    rows = []
    for r, accuracy in enumerate(accuracies):
        rows.append({"kind": "global", "round": r, "accuracy": accuracy, "elapsed_s": 10.0 * r})
        rows[-1]["round_wall_time_s"] = 10.0 if r else 0.0
        if r:
            client = {"kind": "client", "round": r, "status": "ok", "wall_time_s": 4.0, "compute_time_s": 2.0}
            rows.append(
                {**client, "device_time_s": 8.0, "activation_mb": 100.0, "personal_accuracy": accuracy}
            )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (run_dir / "run.json").write_text(json.dumps({"commit": commit}))


def test_the_report_reads_the_experiments_named_runs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    experiment = load_experiment(_write(tmp_path, _BASE))
    runs = tmp_path / "runs"
    _fake_run(runs, run_name("demo", "fedlora", 0), "fedlora", [0.3, 0.5, 0.7], "c0ffee")
    _fake_run(runs, run_name("demo", "leff-t1", 0), "leff", [0.3, 0.69, 0.8], "c0ffee")
    _fake_run(runs, run_name("other", "fedlora", 0), "fedlora", [0.1, 0.1, 0.1], "c0ffee")
    _fake_run(runs, "20261201-120000-fedlora-s0", "fedlora", [0.1, 0.1, 0.1], "c0ffee")
    markdown = run.report(experiment, runs).read_text()
    assert "- commit: c0ffee" in markdown
    assert "0.300 0.500 0.700" in markdown and "0.300 0.690 0.800" in markdown and "0.100" not in markdown
    rows = json.loads((tmp_path / "results" / "demo.json").read_text())["runs"]
    leff = next(r for r in rows if r["variant"] == "leff-t1")
    # FedLoRA's final 0.7 - 0.01 is reached in round 1 (10 s); on the federation clock a round is the
    # server's own 6 s plus the client's 4 s wall at its device's slowdown of 4
    assert leff["target_accuracy"] == 0.69 and leff["time_to_target_s"] == 10.0
    assert leff["time_to_target_federation_s"] == 6.0 + 16.0
    assert sorted((tmp_path / "results").glob("demo-*.png"))


def test_a_comparison_report_tables_the_runs_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    text = _BASE.replace('kind = "testbed"', 'kind = "comparison"\ntarget = 0.6')
    experiment = load_experiment(_write(tmp_path, text))
    runs = tmp_path / "runs"
    _fake_run(runs, run_name("demo", "leff-t1", 1), "leff", [0.3, 0.69, 0.8], "c0ffee")
    markdown = run.report(experiment, runs).read_text()
    assert "time to accuracy 0.6 (s)" in markdown and "demo--leff-t1--seed1" in markdown
    assert re.search(r"\|\s+2 \|\s+0\.800 \|", markdown)  # accuracy per round, one column per run


def test_a_run_lands_under_its_name_with_its_commit_and_is_not_run_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, object]] = []

    def fake_simulate(experiment: object, source: Path, out: Path, settings: dict[str, object]) -> bool:
        calls.append(settings)
        _fake_run(out, "20261207-050000-leff", "leff", [0.3, 0.5], "ignored")
        return True

    monkeypatch.setattr(run, "simulate_run", fake_simulate)
    experiment = load_experiment(_write(tmp_path, _BASE))
    runs = tmp_path / "runs"
    assert run.run_one(experiment, tmp_path, "c0ffee" * 6, runs, "leff-t1", 2)
    final = runs / "demo--leff-t1--seed2"
    record = json.loads((final / "run.json").read_text())
    assert (final / "metrics.jsonl").is_file() and record["commit"] == "c0ffee" * 6
    assert record["run_config"] == calls[0] == experiment.run_config("leff-t1", 2)
    assert not run.run_one(experiment, tmp_path, "c0ffee" * 6, runs, "leff-t1", 2) and len(calls) == 1


def test_a_run_gets_its_threads_and_niceness_and_is_stopped_at_its_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "seen"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\necho "$OMP_NUM_THREADS $(nice)" > {seen}\nexec sleep 60\n')
    fake_python.chmod(0o755)
    monkeypatch.setattr(run.sys, "executable", str(fake_python))
    text = _BASE.replace(
        "supernodes = 8", "supernodes = 8\nthreads = 3\nniceness = 5\ntimeout-minutes = 0.05"
    )
    experiment = load_experiment(_write(tmp_path, text))
    began = time.monotonic()
    assert not run.simulate_run(experiment, tmp_path, tmp_path / "out", experiment.run_config("fedlora", 0))
    assert time.monotonic() - began < 30
    threads, niceness = seen.read_text().split()
    assert threads == "3" and int(niceness) == min(os.nice(0) + 5, 19)


def test_a_commit_that_does_not_exist_is_refused_naming_it() -> None:
    assert run.resolve_commit("HEAD") == run.resolve_commit(run.resolve_commit("HEAD"))
    with pytest.raises(ExperimentError, match="--commit: 'no-such-ref' is not a commit"):
        run.resolve_commit("no-such-ref")
