"""How the clients that drop blocks fare, run by run, beside the same clients in a run without dropout.

Reads run directories of one federation (same seed, same sampled clients) and reports, for every client
that ran layer dropout in any of them: its mean training loss over its rounds (on the sub-network it
trained, so higher under dropout by construction) and the accuracy on its own test rows of the global
model it received (``eval.local``: full depth, so comparable across runs), in the rounds it was sampled.
It also counts the full-depth clients whose update the server's norm clipping (``round.clip-factor``)
shortened. The question it answers: does dropout delay the global model through what the dropping
clients send (weights, sizes, clipping of the others) or through how slowly they learn their own data?

    python benchmarks/dropping_clients.py --name NAME RUN_DIR [RUN_DIR ...]   # -> results/NAME.{md,json}
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import publish_runs_report, runs_report_args, table, variant_and_seed  # noqa: E402

from fedcore.cli.report import load_run  # noqa: E402

#: the rounds in which a model's local accuracy is compared: the federation's first half, where runs part
EARLY_ROUNDS = 10


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def client_rows(run_dir: Path) -> list[dict[str, Any]]:
    clients = load_run(run_dir).client_rows
    return clients.to_dict("records") if len(clients) else []


def dropping_partitions(rows: list[dict[str, Any]]) -> set[int]:
    return {
        int(r["partition_id"]) for r in rows if isinstance(r.get("plan"), dict) and r["plan"].get("mean_drop")
    }


def summarise(run_dir: Path, rows: list[dict[str, Any]], partitions: set[int]) -> dict[str, Any]:
    variant, seed = variant_and_seed(run_dir)
    theirs = [r for r in rows if int(r["partition_id"]) in partitions and r["status"] == "ok"]
    early = [r for r in theirs if r["round"] <= EARLY_ROUNDS]
    full_depth = [r for r in rows if r["status"] == "ok" and not (r.get("plan") or {}).get("mean_drop")]
    return {
        "run": run_dir.name,
        "variant": variant,
        "seed": seed,
        "partitions": sorted(partitions),
        "client_rounds": len(theirs),
        "mean_train_loss": _mean([float(r["train_loss"]) for r in theirs]),
        "mean_local_accuracy_early": _mean([float(r["personal_accuracy"]) for r in early]),
        "mean_local_accuracy": _mean([float(r["personal_accuracy"]) for r in theirs]),
        "full_depth_updates_clipped": sum(1 for r in full_depth if float(r.get("clip_scale", 1.0)) < 0.999),
        "full_depth_updates": len(full_depth),
    }


def main(argv: list[str] | None = None) -> int:
    args = runs_report_args(__doc__.splitlines()[0], argv)
    logs = {run_dir: client_rows(run_dir) for run_dir in args.runs}
    by_seed: dict[int | None, set[int]] = {}
    for run_dir, log in logs.items():
        by_seed.setdefault(variant_and_seed(run_dir)[1], set()).update(dropping_partitions(log))
    rows = [summarise(d, log, by_seed[variant_and_seed(d)[1]]) for d, log in logs.items()]
    rows.sort(key=lambda r: (r["seed"] or 0, r["variant"]))

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    body = table(
        [
            "seed",
            "variant",
            "dropping clients",
            "their client rounds",
            "their train loss",
            f"own-data acc of the model they received, rounds 1-{EARLY_ROUNDS}",
            "the same, all rounds",
            "full-depth updates clipped",
        ],
        [
            [
                r["seed"],
                r["variant"],
                ",".join(map(str, r["partitions"])),
                r["client_rounds"],
                fmt(r["mean_train_loss"]),
                fmt(r["mean_local_accuracy_early"]),
                fmt(r["mean_local_accuracy"]),
                f"{r['full_depth_updates_clipped']} of {r['full_depth_updates']}",
            ]
            for r in rows
        ],
    )
    publish_runs_report(args.name, f"The clients that drop blocks: {args.name}", body, rows, args.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
