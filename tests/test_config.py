"""Run config: defaults agree with pyproject.toml, and every bad value is refused naming its key."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, parse_config_args

from fedcore.config import ConfigError, RunConfig
from fedcore.presets import PRESET_DIR, preset_names, preset_values

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
    ({"round.timeout": 1e-9}, "round.timeout"),
    ({"round.timeout": 9.5}, "round.timeout: must be greater than or equal to 10"),
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
    ({"proxy.name": "server:validation"}, "proxy.name"),
    ({"round.weight-cap": -1.0}, "round.weight-cap"),
    ({"server.optimizer": "adam2"}, "server.optimizer: must be one of 'mean' or 'fedadam'"),
    ({"server.lr": 0.0}, "server.lr"),
    ({"server.beta-1": 1.0}, "server.beta-1"),
    ({"server.beta-2": -0.1}, "server.beta-2"),
    ({"server.tau": 0.0}, "server.tau"),
    ({"leff.keep-protected": True, "leff.student-init": "uniform"}, "leff.keep-protected"),
    ({"method": "leff", "tuning.mode": "lora"}, "tuning.mode"),
    ({"droppeft.rates": "0.2,1.5"}, "droppeft.rates"),
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


@pytest.mark.parametrize("name", preset_names())
def test_a_preset_sets_every_key_it_lists(name: str) -> None:
    claimed = preset_values(name)
    assert claimed, name
    resolved = RunConfig.from_flat({"preset": name}).to_flat()
    assert {key: resolved[key] for key in claimed} == claimed


def test_presets_compose_their_base_and_own_keys_win() -> None:
    base, testbed = preset_values("smollm2"), preset_values("paper-cls")
    assert {key: testbed[key] for key in base} == {**base, "eval.batch-size": 32}, "paper-cls sets its own"
    assert "preset" not in testbed
    cfg = RunConfig.from_flat({"preset": "paper-cls", "method": "leff"})
    assert (cfg.data.name, cfg.data.dirichlet_alpha, cfg.clients.num_partitions) == (
        "embedded:bbc-news",
        0.1,
        8,
    )
    assert cfg.learning_rate == 2e-4, "paper-cls runs full tuning at 2e-4"
    assert RunConfig.from_flat({"preset": "paper-cls", "method": "fedlora"}).learning_rate == 1e-3


def test_an_explicit_value_wins_over_the_preset_even_when_it_is_the_default() -> None:
    default = RunConfig().to_flat()
    assert preset_values("paper-cls")["train.local-steps"] != default["train.local-steps"]
    cfg = RunConfig.from_flat({"preset": "paper-cls", "train.local-steps": default["train.local-steps"]})
    assert cfg.train.local_steps == default["train.local-steps"]
    assert cfg.rounds == 20, "the keys the override leaves alone keep the preset's value"


def test_flower_run_config_overrides_win_over_the_preset(tmp_path: Path) -> None:
    """Flower merges pyproject's defaults with the run's overrides; its record of the override keys is
    what tells an override back to a default value apart from an untouched default."""
    merged = {**RunConfig().to_flat(), "output.dir": str(tmp_path)}
    overrides = {"preset": "llm-austen", "rounds": merged["rounds"], "train.local-steps": 4}
    merged.update(overrides)
    cfg = RunConfig.from_flower(merged, overrides)
    assert cfg.rounds == merged["rounds"] != preset_values("llm-austen")["rounds"]
    assert cfg.train.local_steps == 4
    assert (cfg.model.task, cfg.data.natural_column, cfg.clients.num_partitions) == ("causal-lm", "book", 6)
    # a preset chosen in pyproject itself, nothing overridden: the preset sets all it lists
    assert RunConfig.from_flower({**merged, "preset": "llm-austen"}, {}).rounds == 3
    # the resolved config, as sent to clients, parses to itself (its preset re-applied changes nothing)
    assert RunConfig.from_flat(cfg.to_flat()) == cfg


def test_a_preset_file_given_to_flower_runs_as_the_named_preset(tmp_path: Path) -> None:
    """``flwr run . --run-config fedcore/presets/paper-cls.toml``: the file's keys are the overrides."""
    merged = {**RunConfig().to_flat(), "output.dir": str(tmp_path)}
    overrides = parse_config_args([str(PRESET_DIR / "paper-cls.toml")])
    from_file = RunConfig.from_flower({**merged, **overrides}, overrides)
    named = RunConfig.from_flower({**merged, "preset": "paper-cls"}, {"preset"})
    assert from_file.model_dump(exclude={"preset"}) == named.model_dump(exclude={"preset"})


MESSAGES = [
    # (flat, what the message must contain)
    ({"droppeft.rates": 0.15}, ["droppeft.rates", "quote it", "droppeft.rates='0.15'"]),
    ({"ptls.fraction": "0.3"}, ["ptls.fraction", "unquoted", "ptls.fraction=0.3"]),
    ({"rounds": "5"}, ["rounds", "whole number, unquoted", "rounds=5"]),
    ({"clients.min": 2.0}, ["clients.min", "whole number, unquoted", "clients.min=2"]),
    ({"eval.local": "yes"}, ["eval.local", "true or false"]),
    ({"model.task": "translation"}, ["model.task", "'seq-cls' or 'causal-lm'", "model.task='seq-cls'"]),
    ({"drop.rates": "0.15,0.3"}, ["drop.rates", "moved to droppeft.rates"]),
    ({"leff.proxy": "embedded:proxy-text"}, ["leff.proxy", "moved to proxy.name"]),
    ({"drop.lr-compensation": True}, ["drop.lr-compensation", "removed"]),
    ({"preset": "paper"}, ["preset", "unknown preset 'paper'", "paper-cls"]),
]


@pytest.mark.parametrize(("flat", "expected"), MESSAGES, ids=[str(flat) for flat, _ in MESSAGES])
def test_a_config_error_says_what_to_type(flat: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_flat(flat)
    message = str(error.value)
    for part in expected:
        assert part in message
    for internal in ("union", "literal[", "Input should", "pydantic", "errors.pydantic.dev"):
        assert internal not in message


def test_an_unusable_output_dir_is_refused_naming_the_key(tmp_path: Path) -> None:
    merged = RunConfig().to_flat()
    for unusable in ("/proc/nope", str(_a_file(tmp_path) / "runs")):
        with pytest.raises(ConfigError, match=f"output.dir: cannot create or write to '{unusable}'"):
            RunConfig.from_flower({**merged, "output.dir": unusable}, {"output.dir"})
    fresh = tmp_path / "new" / "runs"
    cfg = RunConfig.from_flower({**merged, "output.dir": str(fresh)}, {"output.dir"})
    assert cfg.output.dir == str(fresh)
    assert fresh.is_dir()


def _a_file(directory: Path) -> Path:
    path = directory / "a-file"
    path.write_text("")
    return path


def test_encoder_testbed_preset() -> None:
    """paper-enc: the 12-block encoder on the news topics, 8 skewed clients, 5 local steps or 20."""
    cfg = RunConfig.from_flat({"preset": "paper-enc", "method": "droppeft"})
    assert (cfg.model.name, cfg.data.name, cfg.data.dirichlet_alpha, cfg.clients.num_partitions) == (
        "embedded:all-mpnet-base-v2",
        "embedded:bbc-news",
        0.1,
        8,
    )
    assert cfg.data.validation_fraction > 0 and cfg.train.local_steps == 5
    # the papers' longer local training: an explicit 20 wins although it is the default value
    assert RunConfig.from_flat({"preset": "paper-enc", "train.local-steps": 20}).train.local_steps == 20
