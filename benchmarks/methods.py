"""End-to-end comparison of the methods on one federation: same data, partitions, seed and rounds.

Each method runs as users run it (``flwr run`` through ``fedlayer simulate``, Ray simulation), one after
the other, so their wall times are comparable on one machine. The run directories are then compared with
``fedcore.cli.report``: accuracy per round and vs wall time, time to a target accuracy, client peak memory,
activation memory and bytes per client.

    python benchmarks/methods.py --methods fedlora,fedavg,fedbitfit,droppeft,leff --target 0.75 \
        --run-config "rounds=5 data.dirichlet-alpha=1.0"

Ablations run as named variants of a method, each with its own overrides on top of the shared ones:

    python benchmarks/methods.py --methods fedlora,droppeft \
        --variant "droppeft-no-ptls=method='droppeft' ptls.fraction=0"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import RESULTS, command_line, header, machine, table, write_results  # noqa: E402
from flwr.common.config import parse_config_args  # noqa: E402

from fedcore.cli.launch import simulate  # noqa: E402
from fedcore.cli.report import RunRecord, comparison_table, load_run, plot_runs, to_markdown  # noqa: E402


def merge_overrides(*parts: str) -> str:
    """One ``--run-config`` string from several; a later part's key wins (Flower refuses repeated keys)."""
    merged: dict[str, object] = {}
    for part in parts:
        if part.strip():
            merged.update(parse_config_args([part]))
    return " ".join(f"{key}={_toml_value(value)}" for key, value in merged.items())


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def accuracy_by_round(runs: list[RunRecord]) -> str:
    """Server-split accuracy per round, one column per run: the trajectories behind the summary table."""
    rounds = sorted({int(r) for run in runs for r in run.global_rows["round"].dropna()})
    rows = []
    for round_number in rounds:
        row: list[object] = [round_number]
        for run in runs:
            hit = run.global_rows[run.global_rows["round"] == round_number]["accuracy"].dropna()
            row.append(f"{float(hit.iloc[0]):.3f}" if len(hit) else "-")
        rows.append(row)
    return table(["round", *(run.name for run in runs)], rows)


def planner_decisions(runs: list[RunRecord]) -> str:
    """What the server's planner chose each round: DropPEFT's arms, LEFF's windows and distillation cost."""
    rows = []
    for run in runs:
        for line in (run.path / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            state = row.get("planner") if row.get("kind") == "global" else None
            if not isinstance(state, dict):
                continue
            if "choices" in state:
                arms = Counter(state["choices"].values())
                decision = ", ".join(f"{arm} x{n}" for arm, n in sorted(arms.items()))
                cost = "-"
            elif "windows" in state:
                decision = " ".join(f"{start}+{width}" for start, width in state["windows"].values())
                rate = state.get("cache_hit_rate")
                hit = "-" if rate is None else f"{rate:.2f}"
                cost = f"distill {state.get('distill_seconds', 0.0):.1f} s, cache hit rate {hit}"
            else:
                continue
            rows.append([run.name, row["round"], decision, cost])
    if not rows:
        return ""
    return table(["run", "round", "decision (arm x clients / window start+width per client)", "server"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fedlora,fedavg,fedbitfit,droppeft,leff")
    parser.add_argument("--supernodes", type=int, default=4)
    parser.add_argument("--cpus", type=float, default=2)
    parser.add_argument("--run-config", default="", help="shared overrides for every method")
    parser.add_argument("--target", type=float, default=0.75, help="accuracy for 'time to target'")
    parser.add_argument("--name", default="methods", help="results/<name>.md and results/<name>-*.png")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="an extra run named NAME with these run-config overrides (repeatable; give method= in them)",
    )
    parser.add_argument("--note", default="", help="how the runs were produced, for the report")
    parser.add_argument(
        "--from-runs",
        type=Path,
        default=None,
        metavar="DIR",
        help="run nothing: write the report from the finished runs in DIR (a benchmarks/runs/<time> folder)",
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    runs_wanted = [(m, merge_overrides(args.run_config, f"method='{m}'")) for m in methods]
    for variant in args.variant:
        name, sep, overrides = variant.partition("=")
        if not sep or not name.strip() or "/" in name:
            parser.error(f"--variant {variant!r}: expected NAME=OVERRIDES")
        runs_wanted.append((name.strip(), merge_overrides(args.run_config, overrides)))

    info = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.from_runs is not None:
        run_dirs = sorted(p.parent for p in args.from_runs.rglob("metrics.jsonl"))
        if not run_dirs:
            parser.error(f"--from-runs {args.from_runs}: no finished run (metrics.jsonl) below it")
        note = "see its config.json (the load average above is from writing this report)"
        runs_wanted = [(d.name, note) for d in run_dirs]
        return report_runs(args, info, args.from_runs, run_dirs, runs_wanted)
    runs_root = ROOT / "benchmarks" / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dirs = []
    for name, run_overrides in runs_wanted:
        run_dir = run_one(runs_root, name, run_overrides, args.supernodes, args.cpus)
        if run_dir is not None:
            run_dirs.append(run_dir)
    return report_runs(args, info, runs_root, run_dirs, runs_wanted)


def run_one(runs_root: Path, name: str, overrides: str, supernodes: int, cpus: float) -> Path | None:
    """Simulate one run into ``runs_root/<stamp>-<name>``; None (with a message) if it did not complete."""
    out = runs_root / name
    code = simulate(ROOT, ROOT / ".flwr", supernodes, cpus, merge_overrides(overrides, f"output.dir='{out}'"))
    found = sorted(out.glob("*/metrics.jsonl"))
    if code != 0 or not found:
        print(f"benchmarks: {name} did not complete; see the log above", file=sys.stderr)
        return None
    # The run directory is renamed after the variant so tables and legends say which run is which.
    stamp = found[-1].parent.name.rsplit("-", 1)[0]
    return found[-1].parent.rename(runs_root / f"{stamp}-{name}")


def report_runs(
    args: argparse.Namespace,
    info: dict[str, object],
    runs_root: Path,
    run_dirs: list[Path],
    runs_wanted: list[tuple[str, str]],
) -> int:
    """Write results/<name>.md (+ json, plots) comparing the finished runs; 1 if any wanted run is missing."""
    runs = [load_run(d) for d in run_dirs]
    summary = to_markdown(comparison_table(runs, target=args.target))
    plots = plot_runs(runs, runs_root)
    for plot in plots:
        shutil.copy(plot, RESULTS / f"{args.name}-{plot.name}")
    report = header(f"Methods side by side: {args.name}", info, command_line(), quick=False)
    report += f"\n{args.note}\n" if args.note else ""
    report += f"\nSupernodes: {args.supernodes}, CPUs per client: {args.cpus:g}. Runs and overrides:\n\n"
    report += "".join(f"- `{name}`: `{overrides}`\n" for name, overrides in runs_wanted)
    report += f"\n{summary}\n\n### Accuracy per round\n\n{accuracy_by_round(runs)}\n"
    decisions = planner_decisions(runs)
    if decisions:
        report += f"\n### Planner decisions\n\n{decisions}\n"
    write_results(args.name, RESULTS, report, {"machine": info, "runs": [str(d) for d in run_dirs]})
    print(report)
    return 0 if len(runs) == len(runs_wanted) else 1


if __name__ == "__main__":
    sys.exit(main())
