"""Run an experiment file: every (variant, seed) as its own simulation, from one fixed commit, then report.

    python -m benchmarks.run benchmarks/experiments/paper-cls-methods.toml
    python -m benchmarks.run paper-cls-methods --variants fedlora,leff --seeds 0 --dry-run

The runs use the code of one commit (``--commit``, HEAD by default), checked out once into a git worktree
under ``benchmarks/runs/worktrees/``, so that edits made while a batch runs do not change its later runs.
Each run is ``fedlayer simulate`` (Flower's Ray simulation, as users run it) in that worktree, one at a
time, under ``nice`` with the experiment's thread count and time limit, and lands in
``<runs-root>/<experiment>--<variant>--seed<N>/`` with a ``run.json`` recording the commit, the machine and
the exact settings. A run whose directory already holds ``metrics.jsonl`` is not run again, so a stopped
batch resumes where it stopped. After every finished run the report is rewritten from all finished runs of
the experiment: ``benchmarks/results/<experiment>.{md,json}`` and its plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.benchlib import RESULTS, header, machine, write_results
from benchmarks.comparison_report import comparison_report
from benchmarks.experiment import (
    EXPERIMENTS,
    Experiment,
    ExperimentError,
    experiment_names,
    find_experiment,
    load_experiment,
    parse_run_name,
    run_name,
    to_run_config_arg,
)
from benchmarks.testbed_report import testbed_report
from fedcore.cli.launch import stop_superlink
from fedcore.cli.report import RunRecord, load_run, plot_runs
from fedcore.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs"
WORKTREES = RUNS / "worktrees"
#: seconds a stopped run's processes get to exit after SIGTERM before SIGKILL
_GRACE_S = 30


def resolve_commit(commit: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ExperimentError(f"--commit: '{commit}' is not a commit of this repository; e.g. --commit HEAD")
    return out.stdout.strip()


def _uncommitted() -> bool:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return bool(out.stdout.strip())


def worktree(commit: str) -> Path:
    """A checkout of ``commit`` to run from, created once and reused."""
    path = WORKTREES / commit[:12]
    if not (path / "pyproject.toml").is_file():
        WORKTREES.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True)
    return path


def resolved_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's full configuration as the server will see it, less the keys left at their defaults."""
    defaults = RunConfig.from_flat({}).to_flat()
    return {k: v for k, v in RunConfig.from_flat(settings).to_flat().items() if defaults.get(k) != v}


def simulate_run(experiment: Experiment, source: Path, out: Path, settings: dict[str, Any]) -> bool:
    """One ``fedlayer simulate`` from ``source`` into ``out``; True if it completed in time."""
    fed = experiment.federation
    flwr_home = source / ".flwr"
    command = [
        "nice",
        "-n",
        str(fed.niceness),
        sys.executable,
        "-m",
        "fedcore.cli.main",
        "simulate",
        "--app",
        str(source),
        "--flwr-home",
        str(flwr_home),
        "--supernodes",
        str(fed.supernodes),
        "--cpus",
        f"{fed.cpus:g}",
        "--run-config",
        to_run_config_arg({**settings, "output.dir": str(out)}),
    ]
    threads = str(fed.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(source)}
    process = subprocess.Popen(command, cwd=source, env=env, start_new_session=True)
    try:
        return process.wait(timeout=fed.timeout_minutes * 60) == 0
    except subprocess.TimeoutExpired:
        print(f"benchmarks: stopping the run after {fed.timeout_minutes:g} minutes", file=sys.stderr)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stop_superlink(flwr_home)
        return False


def run_one(
    experiment: Experiment, source: Path, commit: str, runs_root: Path, variant: str, seed: int
) -> bool:
    """Run one (variant, seed) unless it already finished; True if its run directory is complete."""
    name = run_name(experiment.name, variant, seed)
    final = runs_root / name
    if (final / "metrics.jsonl").is_file():
        print(f"benchmarks: {name} already finished in {final}", flush=True)
        return False
    settings = experiment.run_config(variant, seed)
    partial = runs_root / ".partial" / name
    shutil.rmtree(partial, ignore_errors=True)
    print(f"benchmarks: {name} at {commit[:12]}: {to_run_config_arg(settings)}", flush=True)
    completed = simulate_run(experiment, source, partial, settings)
    found = sorted(partial.glob("*/metrics.jsonl"))
    if not completed or not found:
        print(f"benchmarks: {name} did not complete; see the log above ({partial})", file=sys.stderr)
        return False
    shutil.rmtree(final, ignore_errors=True)
    found[-1].parent.rename(final)
    record = {
        "experiment": experiment.name,
        "variant": variant,
        "seed": seed,
        "commit": commit,
        "machine": machine(),
        "command": command_line(),
        "federation": dataclasses.asdict(experiment.federation),
        "run_config": settings,
    }
    (final / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return True


def finished_runs(experiment: Experiment, runs_root: Path) -> list[tuple[str, int, RunRecord, str]]:
    """(variant, seed, run, commit) of the experiment's finished runs in ``runs_root``, seed by seed."""
    found = []
    for metrics in sorted(runs_root.glob("*/metrics.jsonl")):
        parsed = parse_run_name(metrics.parent.name)
        if parsed is None or parsed[0] != experiment.name or parsed[1] not in experiment.variants:
            continue
        record = metrics.parent / "run.json"
        commit = json.loads(record.read_text())["commit"] if record.is_file() else "unknown"
        found.append((parsed[1], parsed[2], load_run(metrics.parent), commit))
    order = list(experiment.variants)
    return sorted(found, key=lambda r: (r[1], order.index(r[0])))


def report(experiment: Experiment, runs_root: Path) -> Path | None:
    """Write ``results/<experiment>.{md,json}`` and its plots from the finished runs; its Markdown path."""
    found = finished_runs(experiment, runs_root)
    if not found:
        print(f"benchmarks: no finished run of {experiment.name} in {runs_root}", file=sys.stderr)
        return None
    info = machine()
    commits = sorted({commit for *_, commit in found})
    runs = [(variant, seed, run) for variant, seed, run, _ in found]
    markdown = header(experiment.title, info, command_line(), quick=False)
    markdown += f"- commit: {', '.join(commits)}\n- experiment: `{_display(experiment.path)}`\n\n"
    markdown += f"{experiment.description}\n\n" if experiment.description else ""
    fed = experiment.federation
    markdown += (
        f"Supernodes {fed.supernodes}, CPUs per client {fed.cpus:g}, {fed.threads} threads per process. "
        f"Base settings: `{to_run_config_arg(experiment.overrides)}`. Variants:\n\n"
        + "".join(
            f"- `{v}`: `{to_run_config_arg(experiment.variants[v])}`\n"
            for v in dict.fromkeys(r[0] for r in runs)
        )
        + "\n"
    )
    data: dict[str, Any] = {"machine": info, "command": command_line(), "commits": commits}
    if experiment.report.kind == "testbed":
        memory = ROOT / experiment.report.memory if experiment.report.memory else None
        body, data["runs"] = testbed_report(runs, memory)
    else:
        body = comparison_report([run for *_, run in runs], experiment.report.target)
        data["runs"] = [str(run.path) for *_, run in runs]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for plot in plot_runs([run for *_, run in runs], runs_root):
        shutil.copy(plot, RESULTS / f"{experiment.name}-{plot.name}")
    md, _ = write_results(experiment.name, RESULTS, markdown + body, data)
    print(markdown + body, flush=True)
    return md


def dry_run(experiment: Experiment, pairs: list[tuple[str, int]], commit: str, runs_root: Path) -> None:
    """Print what each run would be, nothing run."""
    fed = experiment.federation
    print(
        f"# {experiment.name}: {len(pairs)} runs at commit {commit[:12]} into {runs_root}; supernodes "
        f"{fed.supernodes}, CPUs per client {fed.cpus:g}, OMP_NUM_THREADS={fed.threads}, nice "
        f"{fed.niceness}, at most {fed.timeout_minutes:g} min a run; report: {experiment.report.kind}"
    )
    for variant, seed in pairs:
        settings = experiment.run_config(variant, seed)
        print(f"\n## {run_name(experiment.name, variant, seed)}\n--run-config {to_run_config_arg(settings)}")
        print("resolved (keys not at their default):")
        for key, value in resolved_settings(settings).items():
            print(f"  {key} = {value!r}")


def command_line() -> str:
    """The runner's command as typed (``-m`` leaves only the module's path in ``sys.argv``)."""
    return shlex.join(["python", "-m", "benchmarks.run", *sys.argv[1:]])


def _display(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def _seeds(text: str | None) -> list[int] | None:
    parts = _csv(text)
    if parts is not None and not all(part.isdigit() for part in parts):
        raise ExperimentError(f"--seeds: '{text}'; type whole numbers separated by commas, e.g. --seeds 0,1")
    return [int(part) for part in parts] if parts else None


def _csv(text: str | None) -> list[str] | None:
    return [part for part in text.split(",") if part] if text else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "experiment", nargs="?", help=f"a TOML file or one of: {', '.join(experiment_names())}"
    )
    parser.add_argument("--variants", help="comma-separated; default: all of the file's")
    parser.add_argument("--seeds", help="comma-separated; default: the file's")
    parser.add_argument("--commit", default="HEAD", help="the code to run (default HEAD)")
    parser.add_argument("--runs-root", type=Path, help="default: benchmarks/runs/<experiment>")
    parser.add_argument("--dry-run", action="store_true", help="print every run's settings, run nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from finished runs")
    args = parser.parse_args(argv)
    if args.experiment is None:
        print("experiments (benchmarks/experiments/):")
        for name in experiment_names():
            try:
                print(f"  {name}: {load_experiment(EXPERIMENTS / f'{name}.toml').title}")
            except ExperimentError as error:
                print(f"  {name}: cannot be run as written: {error}")
        return 0
    try:
        experiment = load_experiment(find_experiment(args.experiment))
        seeds = _seeds(args.seeds)
        pairs = experiment.runs(_csv(args.variants), seeds)
        runs_root = (args.runs_root or RUNS / experiment.name).resolve()
        if args.report_only:
            return 0 if report(experiment, runs_root) else 1
        commit = resolve_commit(args.commit)
    except ExperimentError as error:
        parser.error(str(error))
    if args.dry_run:
        dry_run(experiment, pairs, commit, runs_root)
        return 0
    source = worktree(commit)
    print(f"benchmarks: running {len(pairs)} runs of {experiment.name} from {source} ({commit[:12]})")
    if _uncommitted():
        print("benchmarks: this checkout has uncommitted changes; the runs do not include them", flush=True)
    runs_root.mkdir(parents=True, exist_ok=True)
    failed, reported = 0, False
    for variant, seed in pairs:
        if run_one(experiment, source, commit, runs_root, variant, seed):
            reported = report(experiment, runs_root) is not None
        elif not (runs_root / run_name(experiment.name, variant, seed) / "metrics.jsonl").is_file():
            failed += 1
    if not reported:
        report(experiment, runs_root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
