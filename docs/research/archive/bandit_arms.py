"""What DropPEFT's bandit saw: per arm, the probe loss drop, the device time and the reward it was fed.

Reads the client rows of finished DropPEFT runs (``metrics.jsonl``) and tabulates, per run and arm, how
often the arm was played, its mean probe loss before training and the mean drop across the round (full
model, the client's held-out rows), its mean device seconds and two rewards replayed from the logged
losses: the plain drop per device second (the reward the bandit used before) and the log-ratio
log(before / after) per device second (``progress_reward``, the reward now), for the first and the second
half of the federation, and how each correlates with the loss before training over all client rounds.
Beside fixed-rate runs of the same arms, it tells whether a reward ranks the arms as their global accuracy
does.

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
from fedcore.methods.droppeft.bandit import progress_reward


def _drop(row: dict) -> float:
    return row[wire.PROBE_LOSS_BEFORE] - row[wire.PROBE_LOSS_AFTER]


def _log_ratio(row: dict) -> float:
    return progress_reward(row[wire.PROBE_LOSS_BEFORE], row[wire.PROBE_LOSS_AFTER], 1.0)


def probe_rows(run_dir: Path) -> tuple[list[dict], int]:
    """The client rows of a run that carry the probe's losses, and the run's number of rounds."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    clients = [r for r in rows if r["kind"] == "client" and wire.PROBE_LOSS_BEFORE in r]
    return clients, max((r["round"] for r in rows if r["kind"] == "global"), default=0)


def start_correlations(run_dir: Path) -> dict[str, float]:
    """Correlation over a run's client rounds of each progress measure with the loss before training."""
    clients, _ = probe_rows(run_dir)
    before = [r[wire.PROBE_LOSS_BEFORE] for r in clients]
    return {
        "drop": statistics.correlation(before, [_drop(r) for r in clients]),
        "log_ratio": statistics.correlation(before, [_log_ratio(r) for r in clients]),
    }


def arm_rows(run_dir: Path) -> list[dict]:
    """One row per (half of the federation, arm) of one run."""
    clients, rounds = probe_rows(run_dir)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in clients:
        half = f"1-{rounds // 2}" if r["round"] <= rounds // 2 else f"{rounds // 2 + 1}-{rounds}"
        groups[(half, r["plan"]["label"])].append(r)
    out = []
    for (half, arm), group in sorted(groups.items()):
        times = [r[wire.DEVICE_TIME_S] for r in group]
        out.append(
            {
                "rounds": half,
                "arm": arm,
                "plays": len(group),
                "probe_loss_before": statistics.mean(r[wire.PROBE_LOSS_BEFORE] for r in group),
                "probe_loss_drop": statistics.mean(_drop(r) for r in group),
                "device_s": statistics.mean(times),
                "drop_reward": statistics.mean(_drop(r) / t for r, t in zip(group, times, strict=True)),
                "log_ratio": statistics.mean(_log_ratio(r) for r in group),
                "log_ratio_reward": statistics.mean(
                    _log_ratio(r) / t for r, t in zip(group, times, strict=True)
                ),
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
    dirs = [Path(d) for d in args.runs.split(",")]
    runs = {d.name: arm_rows(d) for d in dirs}
    correlations = {d.name: start_correlations(d) for d in dirs}
    cells = [
        [
            run,
            r["rounds"],
            r["arm"],
            r["plays"],
            f"{r['probe_loss_before']:.3f}",
            f"{r['probe_loss_drop']:.3f}",
            f"{r['device_s']:.2f}",
            f"{r['drop_reward']:.4f}",
            f"{r['log_ratio']:.3f}",
            f"{r['log_ratio_reward']:.4f}",
            f"{r['train_loss']:.3f}",
        ]
        for run, rows in runs.items()
        for r in rows
    ]
    markdown = header("What DropPEFT's bandit saw, per arm", info, command_line(), False)
    markdown += (
        "Per run, half of the federation and arm: client rounds played, mean probe loss before training and "
        "its mean drop across the round (full model, the client's held-out rows), mean device seconds, the "
        "mean drop per device second (the former reward), the mean log(before / after) and its mean per "
        f"device second (the reward now), and the mean training loss. {args.note}\n\n"
        + table(
            [
                "run",
                "rounds",
                "arm",
                "plays",
                "probe loss",
                "probe drop",
                "device s",
                "drop / s",
                "log-ratio",
                "log-ratio / s",
                "train loss",
            ],
            cells,
        )
        + "\n\nCorrelation with the probe loss before training, over all client rounds: "
        + "; ".join(
            f"{run}: drop {c['drop']:.2f}, log-ratio {c['log_ratio']:.2f}" for run, c in correlations.items()
        )
        + "\n"
    )
    print(markdown)
    write_results(
        args.name,
        RESULTS,
        markdown,
        {"machine": info, "command": command_line(), "runs": runs, "start_correlations": correlations},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
