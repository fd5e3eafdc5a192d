"""How often did each block of a LEFF run get trained? Counted from the windows a run's server logged.

A LEFF block is updated only in the rounds where some sampled client's window covers it. This script
counts, for each run, the client windows that held each block over the whole federation, next to the
run's final global accuracy, so the window policies can be compared on what they actually trained:

- ``top k`` / ``bottom k``: the summed count of the k blocks next to the head / next to the embeddings;
- ``min`` / ``max``: the least and most trained block's count.

    python benchmarks/leff_window_coverage.py RUN_DIR [RUN_DIR ...] [--edge 5]
    # -> benchmarks/results/leff_window_coverage.{md,json}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchlib import RESULTS, command_line, header, machine, table, write_results
from leff_window_spread import logged_rounds


def block_counts(rounds: list[dict]) -> list[int]:
    """Client windows that held each block, summed over the logged rounds."""
    counts = [0] * len(rounds[0]["importance"])
    for record in rounds:
        for start, width in record["windows"].values():
            for block in range(start, start + width):
                counts[block] += 1
    return counts


def final_accuracy(run_dir: Path) -> float:
    """The last round's global test accuracy."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("kind") == "global"][-1]["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="LEFF run directories (with metrics.jsonl)")
    parser.add_argument("--edge", type=int, default=5, help="blocks counted at each end of the model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows, data = [], []
    for run_dir in args.runs:
        counts = block_counts(logged_rounds(run_dir))
        top, bottom = sum(counts[-args.edge :]), sum(counts[: args.edge])
        accuracy = final_accuracy(run_dir)
        rows.append([run_dir.name, f"{accuracy:.3f}", top, bottom, min(counts), max(counts), counts])
        data.append(
            {"run": run_dir.name, "final_accuracy": accuracy, "top": top, "bottom": bottom, "counts": counts}
        )
    info = machine()
    markdown = header("How often LEFF trained each block", info, command_line(), quick=False)
    markdown += (
        f"\nCounted from the client windows each run's server logged (no training). `top {args.edge}` / "
        f"`bottom {args.edge}`: the summed count of the {args.edge} blocks next to the head / the "
        "embeddings; `counts`: each block's count, block 0 first.\n\n"
    )
    columns = ["run", "final acc", f"top {args.edge}", f"bottom {args.edge}", "min", "max", "counts"]
    markdown += table(columns, rows)
    write_results(
        "leff_window_coverage", args.out, markdown, {"machine": info, "edge": args.edge, "runs": data}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
