"""An experiment file: a federation, the variants compared on it, the seeds, and what to report.

An experiment is a TOML file under ``benchmarks/experiments/``; its name is the file's stem. Every run is
one (variant, seed) pair, named ``<experiment>--<variant>--seed<N>``, and its run config is the base
``[overrides]`` (preset included) with the variant's overrides on top and the seed last. A preset sets
every key it lists and any key the experiment sets wins over it, so a variant states plain values::

    title = "LEFF's windows against FedLoRA"
    description = "What the experiment answers, for the report"
    seeds = [0, 1]

    [federation]            # how every run is simulated
    supernodes = 8
    cpus = 2                # CPUs per client (Ray actor)
    threads = 2             # OMP_NUM_THREADS of the run's processes
    niceness = 10           # the run's `nice` increment
    timeout-minutes = 120   # a run still going after this is stopped and reported as not completed

    [overrides]             # run config shared by every variant
    preset = "paper-cls"

    [report]
    kind = "testbed"        # or "comparison"

    [variants.fedlora]
    method = "fedlora"

    [variants.leff-random]
    method = "leff"
    leff.window = "random"

Every run config is validated by ``RunConfig`` when the file is loaded, so a bad key or value is refused
before anything runs, with the variant it belongs to named.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcore.config import ConfigError, RunConfig
from fedcore.presets import flatten

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
SEPARATOR = "--"
REPORT_KINDS = ("testbed", "comparison")

_TOP_KEYS = {"title", "description", "seeds", "federation", "overrides", "report", "variants"}
_FEDERATION_DEFAULTS: dict[str, Any] = {
    "supernodes": 4,
    "cpus": 2.0,
    "threads": 2,
    "niceness": 10,
    "timeout-minutes": 120.0,
}
_KINDS = {int: "a whole number", float: "a number", str: "text"}
_REPORT_DEFAULTS: dict[str, Any] = {"kind": "comparison", "target": 0.75, "memory": ""}


class ExperimentError(ValueError):
    """An experiment file that cannot be run as written; the message names the key and what to type."""


@dataclass(frozen=True)
class Federation:
    """How each run is simulated: nodes, CPUs per client, threads, niceness and time limit."""

    supernodes: int
    cpus: float
    threads: int
    niceness: int
    timeout_minutes: float


@dataclass(frozen=True)
class Report:
    """What is written after the runs: ``testbed`` (targets from FedLoRA's accuracy, the federation clock,
    per-seed columns; needs a ``fedlora`` variant) or ``comparison`` (``fedlayer report``'s table with
    ``target`` as the time-to-accuracy threshold). ``memory`` optionally names a ``client_round.py`` JSON
    result whose per-method round memory the testbed table quotes."""

    kind: str
    target: float
    memory: str


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    title: str
    description: str
    seeds: tuple[int, ...]
    federation: Federation
    report: Report
    overrides: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run_config(self, variant: str, seed: int) -> dict[str, Any]:
        """The explicit settings of one run: base overrides, the variant's, then the seed."""
        if variant not in self.variants:
            raise ExperimentError(
                f"{self.name}: unknown variant '{variant}'; known: {', '.join(self.variants)}"
            )
        return {**self.overrides, **self.variants[variant], "seed": seed}

    def runs(
        self, variants: list[str] | None = None, seeds: list[int] | None = None
    ) -> list[tuple[str, int]]:
        """(variant, seed) pairs to run, seed by seed so that every variant of a seed lands together."""
        chosen = variants or list(self.variants)
        for variant in chosen:
            self.run_config(variant, 0)  # refuses an unknown variant, naming it
        return [(v, s) for s in (seeds or list(self.seeds)) for v in chosen]


def run_name(experiment: str, variant: str, seed: int) -> str:
    return f"{experiment}{SEPARATOR}{variant}{SEPARATOR}seed{seed}"


def parse_run_name(name: str) -> tuple[str, str, int] | None:
    """(experiment, variant, seed) of a run directory named by ``run_name``; None for any other name."""
    parts = name.split(SEPARATOR)
    if len(parts) != 3 or not parts[2].startswith("seed") or not parts[2][4:].isdigit():
        return None
    return parts[0], parts[1], int(parts[2][4:])


def to_run_config_arg(settings: dict[str, Any]) -> str:
    """The settings as one ``--run-config`` string of TOML values (Flower's syntax)."""
    return " ".join(f"{key}={_toml_value(value)}" for key, value in settings.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def find_experiment(name_or_path: str) -> Path:
    """A path as given, or the name of a file in ``benchmarks/experiments/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = EXPERIMENTS / f"{name_or_path.removesuffix('.toml')}.toml"
    if named.is_file():
        return named
    raise ExperimentError(
        f"no experiment file '{name_or_path}'; give a path or one of: {', '.join(experiment_names())}"
    )


def experiment_names() -> list[str]:
    return sorted(path.stem for path in EXPERIMENTS.glob("*.toml"))


def load_experiment(path: Path) -> Experiment:
    """Read and validate an experiment file, every run config included."""
    name = path.stem
    if SEPARATOR in name:
        raise ExperimentError(f"{path}: an experiment's file name must not contain '{SEPARATOR}'")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ExperimentError(f"{path}: not valid TOML ({error})") from None
    _only_keys(name, "", raw, _TOP_KEYS)
    variants = raw.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ExperimentError(f'{name}: no variants; add one, e.g. [variants.fedlora] method = "fedlora"')
    experiment = Experiment(
        name=name,
        path=path,
        title=str(raw.get("title", name)),
        description=str(raw.get("description", "")),
        seeds=_seeds(name, raw.get("seeds", [0])),
        federation=Federation(**_section(name, "federation", raw, _FEDERATION_DEFAULTS)),
        report=Report(**_section(name, "report", raw, _REPORT_DEFAULTS)),
        overrides=flatten(_table(name, "overrides", raw.get("overrides", {}))),
        variants={v: flatten(_table(name, f"variants.{v}", body)) for v, body in variants.items()},
    )
    _check(experiment)
    return experiment


def _check(experiment: Experiment) -> None:
    name = experiment.name
    if experiment.report.kind not in REPORT_KINDS:
        raise ExperimentError(f"{name}: report.kind: '{experiment.report.kind}'; type one of {REPORT_KINDS}")
    if experiment.report.kind == "testbed" and "fedlora" not in experiment.variants:
        raise ExperimentError(f"{name}: report.kind 'testbed' measures targets against a 'fedlora' variant")
    for variant in experiment.variants:
        if SEPARATOR in variant:
            raise ExperimentError(
                f"{name}: variants.{variant}: a variant's name must not contain '{SEPARATOR}'"
            )
        settings = experiment.run_config(variant, experiment.seeds[0])
        if "seed" in experiment.variants[variant] or "seed" in experiment.overrides:
            raise ExperimentError(
                f"{name}: variants.{variant}: the seed comes from 'seeds', not from overrides"
            )
        try:
            RunConfig.from_flat(settings)
        except ConfigError as error:
            raise ExperimentError(f"{name}: variants.{variant}: {error}") from None


def _only_keys(name: str, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ExperimentError(
            f"{name}: unknown key '{where}{unknown[0]}'; the keys here are: {', '.join(sorted(allowed))}"
        )


def _table(name: str, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ExperimentError(
            f"{name}: '{where}' must be a table of run-config keys, e.g. method = \"fedlora\""
        )
    return value


def _section(name: str, key: str, raw: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    values = _table(name, key, raw.get(key, {}))
    _only_keys(name, f"{key}.", values, set(defaults))
    merged = {**defaults, **values}
    for item, default in defaults.items():
        value = merged[item]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            merged[item] = float(value)
        elif type(merged[item]) is not type(default):
            raise ExperimentError(
                f"{name}: {key}.{item}: {value!r} is not {_KINDS[type(default)]}; "
                f"e.g. {item} = {_toml_value(default)}"
            )
    return {item.replace("-", "_"): value for item, value in merged.items()}


def _seeds(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(type(s) is int and s >= 0 for s in value):
        raise ExperimentError(f"{name}: seeds: {value!r}; type a list of whole numbers, e.g. seeds = [0, 1]")
    return tuple(value)
