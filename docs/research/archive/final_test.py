"""Each run's final global model scored once on the whole server test split and the validation split.

A federation evaluates every round on the first ``eval.max-examples`` test rows (100 on ``paper-cls``,
where one example is a point of accuracy and two runs 4 points apart are within each other's noise).
Here the model each run ended with (its last checkpoint) is scored on every test row instead (212 on
``paper-cls``), to compare final accuracies with half the sampling variance. The first
``eval.max-examples`` rows are scored too and must reproduce the run's own final accuracy, which checks
that the model scored is the one the run reported. Nothing is chosen on these numbers: settings are chosen
on the validation split, also reported.

    python benchmarks/final_test.py --name NAME RUN_DIR [RUN_DIR ...]   # -> results/NAME.{md,json}

Run directories named ``<stamp>-<variant>-s<seed>`` (``paper_testbed.py``, ``methods.py --variant``) are
grouped by variant, with the per-seed values side by side.
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
from fedcore.config import RunConfig  # noqa: E402
from fedcore.data.batching import make_batches  # noqa: E402
from fedcore.data.splits import server_splits  # noqa: E402
from fedcore.model import build_model, load_tunable_state  # noqa: E402
from fedcore.training.evaluate import evaluate  # noqa: E402
from server_app.checkpoint import load_checkpoint  # noqa: E402


def known_keys(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The run's config without the keys this version no longer has (options tried and removed since
    the run), each named on stderr: scoring needs only what builds the model and the splits."""
    known = RunConfig().to_flat()
    dropped = sorted(set(config) - set(known))
    if dropped:
        print(f"{run_dir.name}: config keys unknown to this version, ignored: {dropped}", file=sys.stderr)
    return {key: value for key, value in config.items() if key in known}


def score_run(run_dir: Path) -> dict[str, Any]:
    """The final model's accuracy on the run's first eval rows, all test rows and the validation split."""
    checkpoint = load_checkpoint(run_dir)
    cfg = RunConfig.from_flat(known_keys(checkpoint.config, run_dir))
    splits = server_splits(cfg.data, cfg.model.task, cfg.seed)
    model, tokenizer = build_model(cfg, splits.num_labels)
    load_tunable_state(model, checkpoint.global_state)

    def score(rows: Any) -> dict[str, float]:
        batches = make_batches(rows, tokenizer, cfg.model.task, cfg.model.max_length, cfg.eval.batch_size)
        return evaluate(model, batches, cfg.model.task)

    first = min(cfg.eval.max_examples or len(splits.test), len(splits.test))
    reported = float(load_run(run_dir).global_rows["accuracy"].dropna().iloc[-1])
    variant, seed = variant_and_seed(run_dir)
    row: dict[str, Any] = {
        "run": run_dir.name,
        "variant": variant,
        "seed": seed,
        "round": checkpoint.round,
        "reported_accuracy": reported,
        "first_rows": first,
        "first_rows_accuracy": score(splits.test.select(range(first)))["accuracy"],
        "test_rows": len(splits.test),
        **{f"test_{k}": v for k, v in score(splits.test).items()},
    }
    if len(splits.validation):
        row |= {"validation_rows": len(splits.validation)}
        row |= {f"validation_{k}": v for k, v in score(splits.validation).items()}
    if abs(row["first_rows_accuracy"] - reported) > 1e-6:
        raise SystemExit(
            f"{run_dir}: its final model scores {row['first_rows_accuracy']:.4f} on the rows the "
            f"run evaluated, but the run reported {reported:.4f}: not the model it ended with"
        )
    return row


def _per_seed(rows: list[dict[str, Any]], key: str) -> str:
    values = [r.get(key) for r in sorted(rows, key=lambda r: r["seed"] or 0)]
    return " / ".join("-" if v is None else f"{v:.3f}" for v in values)


def _mean(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    return f"{statistics.fmean(values):.3f}" if values else "-"


def summary(rows: list[dict[str, Any]]) -> str:
    variants: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        variants.setdefault(row["variant"], []).append(row)
    lines = [
        [
            variant,
            _per_seed(group, "reported_accuracy"),
            _per_seed(group, "test_accuracy"),
            _mean(group, "test_accuracy"),
            _per_seed(group, "test_macro_f1"),
            _per_seed(group, "validation_accuracy"),
            _mean(group, "validation_accuracy"),
        ]
        for variant, group in variants.items()
    ]
    columns = [
        "variant",
        "reported final acc per seed (first eval rows)",
        "final acc, every test row, per seed",
        "mean",
        "macro-F1, every test row",
        "final validation acc per seed",
        "mean",
    ]
    return table(columns, lines)


def main(argv: list[str] | None = None) -> int:
    args = runs_report_args(__doc__.splitlines()[0], argv)
    rows = [score_run(run_dir) for run_dir in args.runs]
    per_run = table(
        ["run", "rounds", "reported", "first rows", "test rows", "test acc", "validation acc"],
        [
            [
                r["run"],
                r["round"],
                f"{r['reported_accuracy']:.3f}",
                f"{r['first_rows_accuracy']:.3f} ({r['first_rows']})",
                r["test_rows"],
                f"{r['test_accuracy']:.3f}",
                "-" if "validation_accuracy" not in r else f"{r['validation_accuracy']:.3f}",
            ]
            for r in rows
        ],
    )
    body = f"{summary(rows)}\n\n### Per run\n\n{per_run}"
    publish_runs_report(args.name, f"Final models on every test row: {args.name}", body, rows, args.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
