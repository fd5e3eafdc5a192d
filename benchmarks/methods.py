"""End-to-end comparison of the methods on one federation: same data, partitions, seed and rounds.

Each method runs as users run it (``flwr run`` through ``fedlayer simulate``, Ray simulation), one after
the other, so their wall times are comparable on one machine. The run directories are then compared with
``fedcore.report``: accuracy per round and vs wall time, time to a target accuracy, client peak memory,
activation memory and bytes per client.

    python benchmarks/methods.py --methods fedlora,fedavg,fedbitfit,droppeft,leff --target 0.75 \
        --run-config "rounds=5 data.dirichlet-alpha=1.0"
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import RESULTS, command_line, header, machine, write_results  # noqa: E402

from fedcore.launch import simulate  # noqa: E402
from fedcore.report import comparison_table, load_run, plot_runs, to_markdown  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fedlora,fedavg,fedbitfit,droppeft,leff")
    parser.add_argument("--supernodes", type=int, default=4)
    parser.add_argument("--cpus", type=float, default=2)
    parser.add_argument("--run-config", default="", help="shared overrides for every method")
    parser.add_argument("--target", type=float, default=0.75, help="accuracy for 'time to target'")
    parser.add_argument("--name", default="methods", help="results/<name>.md and results/<name>-*.png")
    args = parser.parse_args(argv)

    info = machine()
    runs_root = ROOT / "benchmarks" / "runs" / time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_dirs = []
    for method in args.methods.split(","):
        out = runs_root / method
        overrides = f"method='{method}' output.dir='{out}' {args.run_config}"
        code = simulate(ROOT, ROOT / ".flwr", args.supernodes, args.cpus, overrides)
        found = sorted(out.glob("*/metrics.jsonl"))
        if code != 0 or not found:
            print(f"benchmarks: {method} did not complete; see the log above", file=sys.stderr)
            continue
        run_dirs.append(found[-1].parent)
    runs = [load_run(d) for d in run_dirs]
    table = to_markdown(comparison_table(runs, target=args.target))
    plots = plot_runs(runs, runs_root)
    for plot in plots:
        shutil.copy(plot, RESULTS / f"{args.name}-{plot.name}")
    report = header(f"Methods side by side: {args.name}", info, command_line(), quick=False)
    report += f"\nSupernodes: {args.supernodes}, CPUs per client: {args.cpus:g}\n\n{table}\n"
    write_results(args.name, RESULTS, report, {"machine": info, "runs": [str(d) for d in run_dirs]})
    print(report)
    return 0 if len(runs) == len(args.methods.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
