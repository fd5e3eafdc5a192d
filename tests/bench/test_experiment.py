"""Experiment files: every committed one validates, bad input is refused naming the key, runs are named so
that their directory names parse back, and the dry run prints each run's resolved settings."""

from __future__ import annotations

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
