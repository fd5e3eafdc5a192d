"""How far from a uniform draw are LEFF's importance windows? Replayed from the importance a run logged.

LEFF samples each client's window from a softmax over window importance (``leff.temperature``). Whether
that is any different from the paper's random-window ablation depends on how peaked the softmax is, which
this script measures without training anything: for every round of the given runs it takes the block
importance the server logged, and for each window width the run used and each temperature, computes

- ``entropy``: the draw's entropy over the entropy of a uniform draw (1.00 = the random ablation);
- ``p top``: the probability of the window that ends at the last block (students only below it);
- ``p both sides``: the probability of a window with students on both sides, the placement that costs a
  client the most accuracy on the deep testbed (``benchmarks/results/leff_causes.md``).

Values are means over the runs' rounds.

    python benchmarks/leff_window_spread.py RUN_DIR [RUN_DIR ...] [--temperatures 1,0.3,0.1]
    # -> benchmarks/results/leff_window_spread.{md,json}
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from benchlib import RESULTS, command_line, header, machine, table, write_results

from fedcore.methods.leff.importance import window_probabilities, window_scores


def logged_rounds(run_dir: Path) -> list[dict]:
    """The planner records (importance, windows) of every round of one run, in order."""
    rounds = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "planner" in record and record["planner"].get("importance"):
            rounds.append(record["planner"])
    if not rounds:
        raise SystemExit(f"{run_dir}: no LEFF planner records with importance in metrics.jsonl")
    return rounds


def spread(importance: list[float], width: int, temperature: float) -> tuple[float, float, float]:
    """(entropy over uniform entropy, p of the top window, p of a window with students on both sides)."""
    probabilities = window_probabilities(window_scores(importance, width), temperature)
    count = len(probabilities)
    entropy = -sum(p * math.log(p) for p in probabilities if p > 0)
    ratio = entropy / math.log(count) if count > 1 else 1.0
    inner = sum(probabilities[1:-1])
    return ratio, probabilities[-1], inner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="LEFF run directories (with metrics.jsonl)")
    parser.add_argument("--temperatures", default="1,0.3,0.1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    rows, data = [], []
    for run_dir in args.runs:
        rounds = logged_rounds(run_dir)
        widths = sorted({int(w) for r in rounds for _, w in r["windows"].values()})
        for width in widths:
            for temperature in temperatures:
                values = [spread(r["importance"], width, temperature) for r in rounds]
                means = [sum(v[i] for v in values) / len(values) for i in range(3)]
                data.append(
                    {
                        "run": run_dir.name,
                        "blocks": len(rounds[0]["importance"]),
                        "width": width,
                        "temperature": temperature,
                        "rounds": len(rounds),
                        "entropy_ratio": means[0],
                        "p_top": means[1],
                        "p_both_sides": means[2],
                    }
                )
                rows.append([run_dir.name, width, temperature, *(f"{m:.2f}" for m in means)])
    info = machine()
    markdown = header("LEFF importance windows against a uniform draw", info, command_line(), quick=False)
    markdown += (
        "\nReplayed from the block importance each run's server logged per round (no training). "
        "`entropy` is the window draw's entropy over a uniform draw's (1.00 = random windows); `p top` the "
        "probability of the window ending at the last block; `p both sides` the probability of a window "
        "with students on both sides. Means over the run's rounds.\n\n"
    )
    markdown += table(["run", "width", "temperature", "entropy", "p top", "p both sides"], rows)
    write_results("leff_window_spread", args.out, markdown, {"machine": info, "rows": data})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
