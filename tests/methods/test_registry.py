"""The method table: the one place that defines a method, read by config validation, registry and docs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fedcore.config import ConfigError, RunConfig
from fedcore.methods.registry import make_planner, planner_class
from fedcore.methods.specs import METHODS, method_spec
from fedcore.model import build_model
from tests.conftest import tiny_run_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_names_a_planner_that_builds_from_the_model(name: str) -> None:
    cls = planner_class(METHODS[name])
    for member in ("from_model", "plan", "observe", "state_dict", "load_state_dict"):
        assert callable(getattr(cls, member, None)), f"{cls.__name__} lacks {member}"


@pytest.mark.parametrize("name", list(METHODS))
def test_auto_settings_come_from_the_method_spec(name: str) -> None:
    spec, cfg = METHODS[name], RunConfig.from_flat({"method": name})
    assert (cfg.tuning_mode, cfg.drop_mode) == (spec.tuning, spec.drop_mode)
    assert spec.tuning in spec.allowed_tuning


def test_an_unknown_method_is_an_error_everywhere(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method: must be one of 'fedavg'"):
        RunConfig.from_flat({"method": "fedsgd"})
    with pytest.raises(ValueError, match="unknown method 'fedsgd'; known: fedavg, fedlora"):
        method_spec("fedsgd")
    cfg = tiny_run_config(tiny_models["bert"], tmp_path)
    model, tokenizer = build_model(cfg, num_labels=2)
    unvalidated = cfg.model_copy(update={"method": "fedsgd"})
    with pytest.raises(ValueError, match="unknown method"):
        make_planner(unvalidated, model, tokenizer)


def test_docs_and_app_config_list_the_methods_of_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `([a-z]+)` \| ", readme.split("## ", 1)[0], re.M)
    assert table == list(METHODS), "README's method table must list fedcore/methods/specs.py's METHODS"
    key_row = next(line for line in readme.splitlines() if line.startswith("| `method` |"))
    assert re.findall(r"`([a-z]+)`", key_row.split("|")[3]) == list(METHODS)
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert defaults["method"] in METHODS
