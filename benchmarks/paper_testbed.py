"""The methods compared on the papers' kind of testbed (``preset='paper-cls'``), seeds side by side.

Every method (and the LEFF window ablations) runs as users run it (``fedlayer simulate``, Ray), one after
the other on one machine, for each seed, with the preset's settings and nothing else changed: the
baselines keep their defaults. Per seed, the target accuracy is FedLoRA's final accuracy minus one point,
and ``time_to_target_s`` is the wall time at which a run first reached it. The clients also evaluate the
model they receive on their own test split (``eval.local``, with their personal layers where the method
keeps any): the *local* target is FedLoRA's final mean local accuracy minus one point, and
``time_to_local_target_s`` the wall time at which a run had produced the first model whose clients' mean
local accuracy reached it (the model evaluated in round r exists at the end of round r - 1; the clients
evaluated differ per round, 4 x 32 examples here, so this curve is noisier). ``client_round_memory_mb``
comes from a ``client_round.py`` result for the same model (peak RSS minus the process's runtime RSS), when
one is given with ``--memory``. Besides the host's wall time, every time is also given on the *federation
clock* (``federation_clock``): what a synchronous federation of the run's device profiles would take, the
slowest sampled client setting each round's length, where the simulation runs the clients one after the
other.

    python benchmarks/paper_testbed.py --seeds 0,1        # -> results/paper-testbed.{md,json} + PNGs
    python benchmarks/paper_testbed.py --from-runs benchmarks/runs/<time>   # report only

The report is rewritten after every finished run, so a long batch can be committed as it lands.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import RESULTS, command_line, header, machine, table, variant_and_seed, write_results  # noqa: E402
from methods import merge_overrides, run_one  # noqa: E402

from fedcore.cli.report import RunRecord, load_run, plot_runs  # noqa: E402

FULL_LR = "train.lr=2e-4"
#: DropPEFT as the paper has it: the bandit over two arms and personal layers (the preset's DropPEFT before
#: its settings were chosen on the validation split; results before batch I call this variant `droppeft`).
PAPER_DROPPEFT = "method='droppeft' droppeft.rates='0.15,0.3' ptls.fraction=0.25"
#: layer dropout only where a device would hold the round up (``drop.target-speed``)
SPEED_MATCHED = "method='droppeft' droppeft.rates='0' drop.target-speed=0.5"
#: LEFF's importance windows at the temperature the importance variants below were measured at before
#: the default became 0.1 (the ``leff-t0.1`` variants are today's default)
T1 = "leff.temperature=1.0"
#: the paper's distilled students (the stand-in of the variants named without ``bf16``)
STUDENTS = "leff.stand-in='students'"
#: variant -> overrides on top of the preset (the default of each method is its own name, LEFF's apart)
VARIANTS = {
    "fedlora": "method='fedlora'",
    # the full-tuning methods at 2e-4, chosen on the server validation split (benchmarks/results/
    # leff_causes.md, one client, 50 steps: full tuning 0.94 against 0.78 at the full-tuning default 5e-5,
    # LEFF's window 0.78 against 0.46); 5e-5 stays the default elsewhere
    "fedavg": f"method='fedavg' {FULL_LR}",
    "fedbitfit": "method='fedbitfit'",
    # the preset's DropPEFT: one arm (0.15, sensitivity) without personal layers, chosen on validation
    "droppeft": "method='droppeft'",
    "droppeft-paper": PAPER_DROPPEFT,
    "droppeft-incremental": f"{PAPER_DROPPEFT} droppeft.shapes='incremental'",
    "droppeft-sensitivity": f"{PAPER_DROPPEFT} droppeft.shapes='sensitivity'",
    "droppeft-fixed0.3": f"{PAPER_DROPPEFT} drop.mode='fixed' drop.mean-rate=0.3 drop.shape='sensitivity'",
    "droppeft-stld-only": "method='droppeft' drop.mode='fixed' drop.mean-rate=0.3 drop.shape='sensitivity' "
    "ptls.fraction=0",
    # the bandit's other arm, fixed: with droppeft-stld-only, the best fixed rate in hindsight (the same
    # configuration as today's preset DropPEFT)
    "droppeft-fixed0.15-no-ptls": "method='droppeft' drop.mode='fixed' drop.mean-rate=0.15 "
    "drop.shape='sensitivity' ptls.fraction=0",
    # the paper's DropPEFT (personal layers included) with the bandit's better arm as its only arm
    "droppeft-arm0.15": "method='droppeft' droppeft.rates='0.15' ptls.fraction=0.25",
    # the paper's DropPEFT without personal layers: isolates what PTLS costs the global model
    "droppeft-no-ptls": "method='droppeft' droppeft.rates='0.15,0.3' ptls.fraction=0",
    "droppeft-warmup": f"{PAPER_DROPPEFT} drop.warmup=0.5",
    # the bandit's probe on one training batch (8 rows) instead of 32: the two full-model passes over 32
    # rows cost a testbed client about as much as 2-3 of its 5 training steps
    "droppeft-probe8": f"{PAPER_DROPPEFT} droppeft.probe-examples=8",
    # layer dropout only where a device would hold the round up: the quarter-speed devices drop half their
    # blocks (a half-speed device's time at full depth), the others run at full depth
    "droppeft-speed-matched": SPEED_MATCHED,
    # the full-depth counterpart of speed-matched dropout: the quarter-speed devices run 2 of the 5 local
    # steps (floor of a half-speed device's time) at full depth, the others all 5 (train.target-speed);
    # separates the cost of skipping blocks from the cost of doing less work on the slow devices
    "fedlora-step-matched": "method='fedlora' train.target-speed=0.5",
    "leff": f"method='leff' {FULL_LR} {STUDENTS} {T1}",
    "leff-random": f"method='leff' {FULL_LR} {STUDENTS} leff.window='random'",
    "leff-round-robin": f"method='leff' {FULL_LR} {STUDENTS} leff.window='round-robin'",
    "leff-t0.1": f"method='leff' {FULL_LR} {STUDENTS} leff.temperature=0.1",
    "leff-protected": f"method='leff' {FULL_LR} {STUDENTS} {T1} leff.keep-protected=true",
    # better students at the same server cost (benchmarks/results/leff_distill_lr.md): distilled at lr 1e-3
    # on the server's validation texts instead of at 1e-4 on the generic proxy headlines
    "leff-students-val-lr1e-3": f"method='leff' {FULL_LR} {STUDENTS} {T1} proxy.name='server:validation' "
    "leff.distill-lr=1e-3",
    # LEFF with the frozen blocks themselves in bfloat16 instead of distilled students (this project's
    # option, fedcore/mechanisms/frozen_precision.py), and its window ablations
    "leff-bf16": f"method='leff' {FULL_LR} {T1} leff.stand-in='bfloat16'",
    "leff-bf16-random": f"method='leff' {FULL_LR} leff.stand-in='bfloat16' leff.window='random'",
    "leff-bf16-round-robin": f"method='leff' {FULL_LR} leff.stand-in='bfloat16' leff.window='round-robin'",
    # batch N: round-robin's best and worst seeds (0.840 / 0.570) trained the top five blocks 90 and 35
    # times, and draws over window starts train both ends of the model least: even coverage instead
    "leff-bf16-least-trained": f"method='leff' {FULL_LR} leff.stand-in='bfloat16' "
    "leff.window='least-trained'",
    # a window trains a sixth to a half of the blocks per round: a larger step, chosen on validation
    "leff-bf16-lr5e-4": f"method='leff' train.lr=5e-4 leff.stand-in='bfloat16' {T1}",
    # importance favours the top blocks (block 29 scores ~10x the median) but at temperature 1 the softmax
    # over scores normalised to [0, 1] draws windows almost uniformly (leff_window_spread.md): sharper
    "leff-bf16-t0.1": f"method='leff' {FULL_LR} leff.stand-in='bfloat16' leff.temperature=0.1",
    # a diagnosis, not a method: LEFF with its frozen blocks exact (no compression, no distillation)
    "leff-exact": f"method='leff' {FULL_LR} {STUDENTS} {T1} leff.compression=1.0 leff.distill-steps=0",
}


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


def run_rows(runs: list[tuple[str, int | None, RunRecord]], memory: dict[str, float]) -> list[dict[str, Any]]:
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
    by_variant: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault((row["batch"], row["variant"]), []).append(row)
    out = []
    for (batch, variant), group in by_variant.items():
        seeds = sorted(r["seed"] for r in group)
        out.append(
            [
                batch,
                variant,
                ",".join(map(str, seeds)),
                " / ".join(f"{r['final_accuracy']:.3f}" for r in sorted(group, key=lambda r: r["seed"])),
                _mean([r["final_accuracy"] for r in group]),
                " / ".join(_fmt(r["final_val_accuracy"], ".3f") for r in _by_seed(group)),
                " / ".join(_fmt(r["final_personal_accuracy"], ".3f") for r in _by_seed(group)),
                " / ".join(_fmt(r["time_to_target_s"], ".0f") for r in _by_seed(group)),
                " / ".join(_fmt(r["time_to_local_target_s"], ".0f") for r in _by_seed(group)),
                " / ".join(_fmt(r.get("time_to_target_federation_s"), ".0f") for r in _by_seed(group)),
                _mean([r["wall_time_s"] for r in group]),
                _mean([r.get("federation_time_s") for r in group]),
                _mean([r["mean_activation_mb"] for r in group]),
                _mean([r.get("slowest_device_activation_mb") for r in group]),
                _mean([r["mean_client_compute_s"] for r in group]),
                _mean([r["mean_client_wall_s"] for r in group]),
                group[0]["client_round_memory_mb"],
            ]
        )
    return out


def report(args: argparse.Namespace, info: dict[str, Any], runs_root: Path, runs: list) -> None:
    rows = [{"batch": args.name, **row} for row in run_rows(runs, _round_memory(args.memory))]
    for earlier in args.with_results:
        rows += [{"batch": earlier.stem, **row} for row in json.loads(earlier.read_text())["runs"]]
    for plot in plot_runs([run for _, _, run in runs], runs_root):
        shutil.copy(plot, RESULTS / f"{args.name}-{plot.name}")
    markdown = header("Methods on the paper-cls testbed", info, command_line(), quick=False)
    markdown += (
        (f"{args.note}\n\n" if args.note else "")
        + f"Preset `paper-cls` + `{args.run_config}`; supernodes {args.supernodes}, CPUs per client "
        f"{args.cpus:g}. Target per seed: FedLoRA's final accuracy minus 0.01; local target: FedLoRA's "
        "final mean local accuracy (clients' own test examples, personal layers included where kept) minus "
        "0.01. The federation clock is what a synchronous federation of the run's devices would take: "
        "per round the server's own time plus the slowest sampled client's round on its device (its wall "
        "time times its profile's slowdown), where the host's wall time adds up every client's round "
        "because the simulation runs them one after the other.\n\n"
        + table(
            [
                "batch",
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
        + "\n\nFedBitFit cannot run here: SmolLM2 (a Llama) has no bias parameters, and the run is "
        "refused at start, as the LEFF paper's Table 5 marks FedBitFit on Llama. `client round MB` (peak "
        "RSS minus runtime RSS of one client round) comes from the `--memory` file, one row per method "
        "(there DropPEFT is a fixed p=0.5 round and LEFF holds the smallest device's window), not from "
        "these federations.\n"
        + "\n### Accuracy per round\n\n"
        + table(
            ["batch", "variant", "seed", "accuracy by round (round 0 first)"],
            [
                [r["batch"], r["variant"], r["seed"], " ".join(f"{a:.3f}" for a in r["accuracy_by_round"])]
                for r in rows
            ],
        )
        + "\n"
    )
    write_results(args.name, RESULTS, markdown, {"machine": info, "command": command_line(), "runs": rows})
    print(markdown, flush=True)


def finished_runs(root: Path) -> list[tuple[str, int | None, RunRecord]]:
    """(variant, seed, run) for every finished run in ``root``, in the order they ran."""
    dirs = sorted(p.parent for p in root.glob("*-s[0-9]*/metrics.jsonl"))
    return [(*variant_and_seed(d), load_run(d)) for d in dirs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--name", default="paper-testbed", help="results/<name>.{md,json} and its PNGs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--supernodes", type=int, default=8)
    parser.add_argument("--note", default="", help="how the runs were produced, for the report")
    parser.add_argument("--cpus", type=float, default=2)
    parser.add_argument("--run-config", default="", help="extra overrides for every run (after the preset)")
    parser.add_argument("--memory", type=Path, default=None, help="a client_round.py JSON result")
    parser.add_argument("--from-runs", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--with-results",
        type=Path,
        nargs="*",
        default=[],
        metavar="JSON",
        help="earlier batches' result files whose runs the report lists too (as they were measured; "
        "times compare only within a batch)",
    )
    parser.add_argument(
        "--runs-root", type=Path, default=None, help="add to (and report) the runs already in this folder"
    )
    args = parser.parse_args(argv)
    info = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.from_runs is not None:
        report(args, info, args.from_runs, finished_runs(args.from_runs))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}")
    runs_root = args.runs_root or ROOT / "benchmarks" / "runs" / time.strftime("%Y%m%d-%H%M%S")
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in variants:
            overrides = merge_overrides(
                "preset='paper-cls'", args.run_config, VARIANTS[variant], f"seed={seed}"
            )
            if run_one(runs_root, f"{variant}-s{seed}", overrides, args.supernodes, args.cpus) is not None:
                report(args, info, runs_root, finished_runs(runs_root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
