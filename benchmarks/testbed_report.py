"""The testbed report: per-seed accuracies, targets set by FedLoRA, and times on the federation clock.

Per seed, the target accuracy is FedLoRA's final accuracy minus one point, and ``time_to_target_s`` is the
wall time at which a run first reached it. The clients also evaluate the model they receive on their own
test split (``eval.local``, with their personal layers where the method keeps any): the *local* target is
FedLoRA's final mean local accuracy minus one point, and ``time_to_local_target_s`` the wall time at which
a run had produced the first model whose clients' mean local accuracy reached it (the model evaluated in
round r exists at the end of round r - 1). ``client_round_memory_mb`` comes from a ``client_round.py``
result for the same model (peak RSS minus the process's runtime RSS), when the experiment's
``report.memory`` names one. Besides the host's wall time, every time is also given on the *federation
clock* (``federation_clock``): what a synchronous federation of the run's device profiles would take, the
slowest sampled client setting each round's length, where the simulation runs the clients one after the
other.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.benchlib import table
from fedcore.cli.report import RunRecord


def _local_by_round(run: RunRecord) -> dict[int, float]:
    """Round -> the mean local accuracy its clients measured on the model they received."""
    c = run.client_rows
    if "personal_accuracy" not in c:
        return {}
    reported = c.dropna(subset=["personal_accuracy"])
    return {int(r): float(v) for r, v in reported.groupby("round")["personal_accuracy"].mean().items()}


def _first_local_reach(run: RunRecord, target: float) -> float | None:
    """Wall time at which the first model whose clients' mean local accuracy reached ``target`` existed."""
    elapsed = dict(zip(run.global_rows["round"], run.global_rows["elapsed_s"], strict=True))
    for round_number, accuracy in sorted(_local_by_round(run).items()):
        if accuracy >= target:
            return float(elapsed[round_number - 1])
    return None


def _first_reach(run: RunRecord, target: float) -> float | None:
    reached = run.global_rows[run.global_rows["accuracy"] >= target]
    return float(reached["elapsed_s"].iloc[0]) if len(reached) else None


def _slowdown(c: Any) -> Any:
    """Per client row, how many times slower its device profile is than the host (1 / speed)."""
    return c["device_time_s"] / c["compute_time_s"]


def federation_clock(run: RunRecord) -> dict[int, float]:
    """Round -> seconds a synchronous federation of the run's devices would have taken to its end.

    The simulation runs the clients one after the other on this host, so its wall time is their sum; a
    deployed federation waits for its slowest client. Per round: the server's own time (the round's wall
    time minus the client rounds) plus the slowest sound client's round on its device (its wall time
    times its profile's slowdown). Transfers are not modelled (loopback here).
    """
    g, c = run.global_rows, run.client_rows
    ok = c[c["status"] == "ok"]
    device_wall = (ok["wall_time_s"] * _slowdown(ok)).groupby(ok["round"]).max()
    client_sum = ok["wall_time_s"].groupby(ok["round"]).sum()
    clock, elapsed = {}, 0.0
    for round_number, round_wall in zip(g["round"], g["round_wall_time_s"], strict=True):
        round_number = int(round_number)
        if round_number > 0:
            server = max(0.0, float(round_wall) - float(client_sum.get(round_number, 0.0)))
            elapsed += server + float(device_wall.get(round_number, 0.0))
        clock[round_number] = elapsed
    return clock


def _first_federation_reach(run: RunRecord, clock: dict[int, float], target: float) -> float | None:
    for round_number, accuracy in zip(run.global_rows["round"], run.global_rows["accuracy"], strict=True):
        if accuracy >= target:
            return clock[int(round_number)]
    return None


def _slowest_device_activation(c: Any) -> float | None:
    """Mean activation MB of the client rounds run on the run's slowest device profile."""
    ok = c[c["status"] == "ok"].dropna(subset=["activation_mb", "device_time_s", "compute_time_s"])
    if not len(ok):
        return None
    slowdown = _slowdown(ok).round(3)
    return float(ok[slowdown == slowdown.max()]["activation_mb"].mean())


def _round_memory(path: Path | None) -> dict[str, float]:
    """method -> peak RSS minus runtime RSS of one client round, from a client_round.py result file."""
    if path is None:
        return {}
    results = json.loads(path.read_text())["results"]
    return {r["method"]: r["peak_rss_mb"] - r["rss_runtime_mb"] for r in results}


def run_rows(runs: list[tuple[str, int, RunRecord]], memory: dict[str, float]) -> list[dict[str, Any]]:
    """One object per run with the fields the comparison is judged on."""
    lora_final = {
        seed: float(run.global_rows["accuracy"].iloc[-1])
        for variant, seed, run in runs
        if variant == "fedlora"
    }
    lora_local = {
        seed: _local_by_round(run).get(int(run.global_rows["round"].max()), math.nan)
        for variant, seed, run in runs
        if variant == "fedlora"
    }
    rows = []
    for variant, seed, run in runs:
        g, c = run.global_rows, run.client_rows
        target = lora_final.get(seed, math.nan) - 0.01
        clock = federation_clock(run)
        local_target = lora_local.get(seed, math.nan) - 0.01
        activation = c["activation_mb"].dropna() if "activation_mb" in c else []
        validation = g["val_accuracy"].iloc[-1] if "val_accuracy" in g else None
        rows.append(
            {
                "method": run.method,
                "variant": variant,
                "seed": seed,
                "final_accuracy": float(g["accuracy"].iloc[-1]),
                "final_val_accuracy": None if validation is None else float(validation),
                "final_personal_accuracy": _last_round_mean(c, "personal_accuracy"),
                "target_accuracy": None if math.isnan(target) else round(target, 4),
                "time_to_target_s": None if math.isnan(target) else _first_reach(run, target),
                "local_target_accuracy": None if math.isnan(local_target) else round(local_target, 4),
                "time_to_local_target_s": None
                if math.isnan(local_target)
                else _first_local_reach(run, local_target),
                "time_to_target_federation_s": None
                if math.isnan(target)
                else _first_federation_reach(run, clock, target),
                "wall_time_s": float(g["elapsed_s"].max()),
                "federation_time_s": max(clock.values()),
                "mean_activation_mb": float(activation.mean()) if len(activation) else None,
                "slowest_device_activation_mb": _slowest_device_activation(c),
                "mean_client_compute_s": _column_mean(c, "compute_time_s"),
                "mean_client_wall_s": _column_mean(c, "wall_time_s"),
                "client_round_memory_mb": memory.get(run.method),
                "accuracy_by_round": [round(float(a), 4) for a in g["accuracy"]],
                "run_dir": str(run.path),
            }
        )
    return rows


def _last_round_mean(rows: Any, column: str) -> float | None:
    """Mean over the clients of the last round that reported ``column`` (personalised accuracy)."""
    if column not in rows:
        return None
    reported = rows.dropna(subset=[column])
    if not len(reported):
        return None
    return float(reported[reported["round"] == reported["round"].max()][column].mean())


def _column_mean(rows: Any, column: str) -> float | None:
    """Mean of a client-row column over the run's client rounds (None when no client reported it)."""
    if column not in rows:
        return None
    values = rows[column].dropna()
    return float(values.mean()) if len(values) else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if len(present) == len(values) and present else None


def _by_seed(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(group, key=lambda r: r["seed"])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _summary(rows: list[dict[str, Any]]) -> list[list[Any]]:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    out = []
    for variant, group in by_variant.items():
        out.append(
            [
                variant,
                ",".join(str(r["seed"]) for r in _by_seed(group)),
                " / ".join(f"{r['final_accuracy']:.3f}" for r in _by_seed(group)),
                _mean([r["final_accuracy"] for r in group]),
                " / ".join(_fmt(r["final_val_accuracy"], ".3f") for r in _by_seed(group)),
                " / ".join(_fmt(r["final_personal_accuracy"], ".3f") for r in _by_seed(group)),
                " / ".join(_fmt(r["time_to_target_s"], ".0f") for r in _by_seed(group)),
                " / ".join(_fmt(r["time_to_local_target_s"], ".0f") for r in _by_seed(group)),
                " / ".join(_fmt(r["time_to_target_federation_s"], ".0f") for r in _by_seed(group)),
                _mean([r["wall_time_s"] for r in group]),
                _mean([r["federation_time_s"] for r in group]),
                _mean([r["mean_activation_mb"] for r in group]),
                _mean([r["slowest_device_activation_mb"] for r in group]),
                _mean([r["mean_client_compute_s"] for r in group]),
                _mean([r["mean_client_wall_s"] for r in group]),
                group[0]["client_round_memory_mb"],
            ]
        )
    return out


def testbed_report(
    runs: list[tuple[str, int, RunRecord]], memory: Path | None
) -> tuple[str, list[dict[str, Any]]]:
    """The report's Markdown body and one object per run."""
    rows = run_rows(runs, _round_memory(memory))
    markdown = (
        "Target per seed: FedLoRA's final accuracy minus 0.01; local target: FedLoRA's final mean local "
        "accuracy (clients' own test examples, personal layers included where kept) minus 0.01. The "
        "federation clock is what a synchronous federation of the run's devices would take: per round the "
        "server's own time plus the slowest sampled client's round on its device (its wall time times its "
        "profile's slowdown), where the host's wall time adds up every client's round because the "
        "simulation runs them one after the other. `client round MB` (peak RSS minus runtime RSS of one "
        "client round) comes from the `report.memory` file, one row per method, not from these "
        "federations.\n\n"
        + table(
            [
                "variant",
                "seeds",
                "final acc per seed",
                "mean final acc",
                "final validation acc per seed",
                "final local acc per seed",
                "time to target s per seed",
                "time to local target s per seed",
                "time to target on the federation clock s per seed",
                "mean wall s",
                "mean federation clock s",
                "mean activation MB",
                "slowest device activation MB",
                "client train s / round",
                "client wall s / round",
                "client round MB",
            ],
            _summary(rows),
        )
        + "\n\n### Accuracy per round\n\n"
        + table(
            ["variant", "seed", "accuracy by round (round 0 first)"],
            [[r["variant"], r["seed"], " ".join(f"{a:.3f}" for a in r["accuracy_by_round"])] for r in rows],
        )
        + "\n"
    )
    return markdown, rows
