"""Run config: defaults agree with pyproject.toml, and every bad value is refused naming its key."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict

from fedcore.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_defaults_match_config_defaults() -> None:
    """Flower only accepts --run-config keys listed in pyproject, so both must list the same keys."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    assert declared == RunConfig().to_flat()


def test_flat_round_trip() -> None:
    cfg = RunConfig.from_flat({"method": "fedavg", "train.lr": 1e-4, "data.partition": "iid"})
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
    assert cfg.tuning_mode == "full"
    assert cfg.learning_rate == 1e-4


def test_method_defaults() -> None:
    assert RunConfig.from_flat({"method": "fedlora"}).learning_rate == 1e-3
    assert RunConfig.from_flat({"method": "fedavg"}).learning_rate == 5e-5
    assert RunConfig.from_flat({"method": "leff", "train.lr": 1e-5}).learning_rate == 1e-5
    assert RunConfig.from_flat({"method": "fedbitfit"}).tuning_mode == "bitfit"


BAD_CONFIGS = [
    ({"method": "fedsgd"}, "method"),
    ({"rounds": 0}, "rounds"),
    ({"seed": -1}, "seed"),
    ({"unknown-key": 1}, "unknown-key"),
    ({"model.nmae": "x"}, "model.nmae"),
    ({"model.task": "translation"}, "model.task"),
    ({"model.max-length": 2}, "model.max-length"),
    ({"tuning.mode": "prefix"}, "tuning.mode"),
    ({"method": "fedlora", "tuning.mode": "full"}, "tuning.mode"),
    ({"tuning.lora-r": 0}, "tuning.lora-r"),
    ({"tuning.lora-dropout": 1.0}, "tuning.lora-dropout"),
    ({"data.partition": "by-user"}, "data.partition"),
    ({"data.partition": "natural"}, "data.natural-column"),
    ({"data.dirichlet-alpha": 0}, "data.dirichlet-alpha"),
    ({"data.test-fraction": 1.0}, "data.test-fraction"),
    ({"data.client-test-fraction": -0.1}, "data.client-test-fraction"),
    ({"clients.min": 0}, "clients.min"),
    ({"clients.per-round": -2}, "clients.per-round"),
    ({"train.lr": 2.0}, "train.lr"),
    ({"train.batch-size": 0}, "train.batch-size"),
    ({"train.local-steps": -1}, "train.local-steps"),
    ({"train.local-epochs": 0}, "train.local-epochs"),
    ({"train.warmup-fraction": 1.0}, "train.warmup-fraction"),
    ({"train.clip-norm": -1.0}, "train.clip-norm"),
    ({"round.timeout": 0}, "round.timeout"),
    ({"eval.batch-size": 0}, "eval.batch-size"),
    ({"train.batch-size": "big"}, "train.batch-size"),
    ({"model": 3}, "model"),
    ({"model.name.sub": "x"}, "model.name"),
    ({"preset": "llm-huge"}, "preset"),
    ({"drop.target-speed": -0.5}, "drop.target-speed"),
    ({"train.target-speed": -0.5}, "train.target-speed"),
    ({"train.target-speed": 0.5, "train.local-steps": 0}, "train.target-speed"),
    ({"train.target-speed": 0.5, "drop.target-speed": 0.5}, "set at most one of them"),
    ({"leff.window": "best"}, "leff.window"),
    ({"leff.compression": 0}, "leff.compression"),
    ({"leff.stand-in": "int3"}, "leff.stand-in"),
    ({"leff.proxy": "server:validation"}, "leff.proxy"),
    ({"round.weight-cap": -1.0}, "round.weight-cap"),
    ({"leff.keep-protected": True, "leff.student-init": "uniform"}, "leff.keep-protected"),
    ({"method": "leff", "tuning.mode": "lora"}, "tuning.mode"),
    ({"drop.rates": "0.2,1.5"}, "drop.rates"),
    ({"drop.mode": "always"}, "drop.mode"),
    ({"ptls.fraction": 1.0}, "ptls.fraction"),
    ({"rounds": True}, "rounds"),
    ({"rounds": "5"}, "rounds"),
    ({"rounds": 5.0}, "rounds"),
    ({"output.save-model": "yes"}, "output.save-model"),
    ({"train.clip-norm": math.inf}, "train.clip-norm"),
    ({"round.timeout": math.inf}, "round.timeout"),
    ({"leff.temperature": math.inf}, "leff.temperature"),
    ({"train.lr": math.nan}, "train.lr"),
    ({"clients.per-round": 1, "clients.min": 2}, "clients.per-round=1 is below clients.min=2"),
    (
        {"devices.profiles": "workstation,raspberry-pi"},
        "devices.profiles: unknown profile(s) ['raspberry-pi']",
    ),
]


@pytest.mark.parametrize(("flat", "key"), BAD_CONFIGS, ids=[str(flat) for flat, _ in BAD_CONFIGS])
def test_bad_config_is_refused_naming_the_key(flat: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_flat(flat)
    assert key in str(error.value)


def test_preset_fills_defaults_but_explicit_values_win() -> None:
    cfg = RunConfig.from_flat({"preset": "llm-austen", "train.local-steps": 4})
    assert (cfg.model.task, cfg.data.natural_column, cfg.clients.num_partitions) == ("causal-lm", "book", 6)
    assert cfg.train.local_steps == 4
    assert RunConfig.from_flat({"preset": "llm-classifier"}).model.task == "seq-cls"
    testbed = RunConfig.from_flat({"preset": "paper-cls", "method": "leff"})
    assert (testbed.data.name, testbed.data.dirichlet_alpha, testbed.clients.num_partitions) == (
        "embedded:bbc-news",
        0.1,
        8,
    )
    assert testbed.data.validation_fraction > 0 and testbed.rounds >= 10
    droppeft = RunConfig.from_flat({"preset": "paper-cls", "method": "droppeft"})
    assert (droppeft.drop.rate_grid(), droppeft.ptls.fraction) == ([0.15], 0.0)
    # the app sees only the merged config: a value equal to the default reads as unset, another spelling wins
    for rates, grid in (("0.15,0.3", [0.15]), ("0.15,0.30", [0.15, 0.3])):
        paper = RunConfig.from_flat({"preset": "paper-cls", "method": "droppeft", "drop.rates": rates})
        assert paper.drop.rate_grid() == grid
