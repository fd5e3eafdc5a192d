"""What DropPEFT's bandit saw: per arm, the probe loss drop, the device time and the reward it was fed.

Reads the client rows of finished DropPEFT runs (``metrics.jsonl``) and tabulates, per run and arm, how
often the arm was played, its mean probe loss before training and the mean drop across the round (full
model, the client's held-out rows), its mean device seconds and its mean reward (drop per device second),
for the first and the second half of the federation. Beside fixed-rate runs of the same arms, it tells
whether the reward ranks the arms as their global accuracy does.

    python benchmarks/bandit_arms.py --runs RUN_DIR[,RUN_DIR...] --name bandit_arms
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from benchlib import RESULTS, command_line, header, machine, table, write_results

from fedcore.core import wire


def arm_rows(run_dir: Path) -> list[dict]:
    """One row per (half of the federation, arm) of one run."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    clients = [r for r in rows if r["kind"] == "client" and wire.PROBE_LOSS_BEFORE in r]
    rounds = max((r["round"] for r in rows if r["kind"] == "global"), default=0)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in clients:
        half = f"1-{rounds // 2}" if r["round"] <= rounds // 2 else f"{rounds // 2 + 1}-{rounds}"
        groups[(half, r["plan"]["label"])].append(r)
    out = []
    for (half, arm), group in sorted(groups.items()):
        drops = [r[wire.PROBE_LOSS_BEFORE] - r[wire.PROBE_LOSS_AFTER] for r in group]
        times = [r[wire.DEVICE_TIME_S] for r in group]
        out.append(
            {
                "rounds": half,
                "arm": arm,
                "plays": len(group),
                "probe_loss_before": statistics.mean(r[wire.PROBE_LOSS_BEFORE] for r in group),
                "probe_loss_drop": statistics.mean(drops),
                "device_s": statistics.mean(times),
                "reward": statistics.mean(d / t for d, t in zip(drops, times, strict=True)),
                "train_loss": statistics.mean(r[wire.TRAIN_LOSS] for r in group),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", required=True, help="comma-separated run directories")
    parser.add_argument("--name", default="bandit_arms")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    info = machine()
    runs = {Path(d).parent.name + "/" + Path(d).name: arm_rows(Path(d)) for d in args.runs.split(",")}
    cells = [
        [
            run,
            r["rounds"],
            r["arm"],
            r["plays"],
            f"{r['probe_loss_before']:.3f}",
            f"{r['probe_loss_drop']:.3f}",
            f"{r['device_s']:.2f}",
            f"{r['reward']:.4f}",
            f"{r['train_loss']:.3f}",
        ]
        for run, rows in runs.items()
        for r in rows
    ]
    markdown = header("What DropPEFT's bandit saw, per arm", info, command_line(), False)
    markdown += (
        "Per run, half of the federation and arm: client rounds played, mean probe loss before training and "
        "its mean drop across the round (full model, the client's held-out rows), mean device seconds, "
        f"mean reward (drop per device second) and mean training loss. {args.note}\n\n"
        + table(
            ["run", "rounds", "arm", "plays", "probe loss", "probe drop", "device s", "reward", "train loss"],
            cells,
        )
        + "\n"
    )
    print(markdown)
    write_results(args.name, RESULTS, markdown, {"machine": info, "command": command_line(), "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
