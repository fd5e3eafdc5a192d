"""Compare finished (or crashed) runs: one table and a few plots from the files the server writes.

A run directory holds ``config.json`` (flat dotted run config), ``metrics.jsonl`` (one ``client`` row per
client reply and one ``global`` row per evaluated round) and, when the run finished, ``summary.json``.
``metrics.jsonl`` is the source of truth: everything here is recomputed from it so that a crashed run,
which has no summary, still reports what it did.

Units: times in seconds; traffic in decimal megabytes (1 MB = 1,000,000 bytes); memory columns are the
``*_mb`` figures as the client measured them.

    python -m fedcore.cli.report RUN_DIR [RUN_DIR...] [--out DIR] [--target 0.75]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import numbers
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedcore.core import wire
from fedcore.core.files import write_atomic

BYTES_PER_MB = 1_000_000

GLOBAL_NUMERIC = (
    "round",
    "accuracy",
    "macro_f1",
    "loss",
    "perplexity",
    "elapsed_s",
    "round_wall_time_s",
    wire.BYTES_DOWN,
    wire.BYTES_UP,
    "clients_ok",
    "clients_failed",
    "max_client_peak_rss_mb",
)
CLIENT_NUMERIC = (
    "round",
    "node_id",
    "partition_id",
    wire.EXAMPLES,
    wire.TRAIN_LOSS,
    wire.WALL_TIME_S,
    wire.COMPUTE_TIME_S,
    wire.PEAK_RSS_MB,
    wire.ACTIVATION_MB,
    wire.BYTES_DOWN,
    wire.BYTES_UP,
)
CLIENT_OTHER = ("status", "reason", "plan")

# Table columns. Task-metric columns that are empty for every run (accuracy for language models,
# perplexity for classifiers, activation memory when no client measured it) are left out of the table.
COL_RUN = "run"
COL_METHOD = "method"
COL_ROUNDS = "rounds"
COL_FINAL_ACC = "final accuracy"
COL_BEST_ACC = "best accuracy"
COL_VAL_ACC = "final validation accuracy"
COL_F1 = "final macro-F1"
COL_PERSONAL_ACC = "final personal accuracy"
COL_PPL = "final perplexity"
COL_WALL = "wall time (s)"
COL_RSS_MEAN = "mean client peak RSS (MB)"
COL_RSS_MAX = "max client peak RSS (MB)"
COL_ACT = "mean activation (MB)"
COL_DOWN = "MB down / client-round"
COL_UP = "MB up / client-round"
COL_FAILED = "failed/rejected replies"
_DROP_WHEN_EMPTY = (COL_FINAL_ACC, COL_BEST_ACC, COL_VAL_ACC, COL_F1, COL_PERSONAL_ACC, COL_PPL, COL_ACT)


class ReportError(ValueError):
    """A run directory cannot be read; the message names the path (and line) at fault."""


@dataclass
class RunRecord:
    """Everything the report needs from one run directory, with metrics already tabulated."""

    name: str
    method: str
    config: dict[str, Any]
    global_rows: pd.DataFrame
    client_rows: pd.DataFrame
    summary: dict[str, Any] | None
    path: Path

    @property
    def label(self) -> str:
        """Legend label: run directory names rarely say which method ran, so both are shown."""
        return f"{self.name} ({self.method})"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _is_number(value: Any) -> bool:
    """JSON null counts as numeric: a metric may be missing in some rounds and present in others."""
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split metrics.jsonl into global and client rows; unknown kinds are skipped (forward compatibility)."""
    global_rows: list[dict[str, Any]] = []
    client_rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReportError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ReportError(f"{path}: line {lineno}: expected a JSON object")
            kind = row.get("kind")
            if kind not in ("global", "client"):
                continue
            if not isinstance(row.get("round"), int) or isinstance(row.get("round"), bool):
                raise ReportError(f"{path}: line {lineno}: {kind} row has no integer 'round'")
            (global_rows if kind == "global" else client_rows).append(row)
    return global_rows, client_rows


def _global_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Known metrics plus any extra key whose values are all numeric (e.g. personal_accuracy)."""
    extra = sorted(
        {k for row in rows for k in row if k not in GLOBAL_NUMERIC and k != "kind"}
        - {k for row in rows for k, v in row.items() if not _is_number(v)}
    )
    columns = [*GLOBAL_NUMERIC, *extra]
    df = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
    for col in columns:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    # A resumed server may log a round twice; the later row describes the model that was kept.
    df = df.drop_duplicates(subset="round", keep="last").sort_values("round", kind="stable")
    return df.reset_index(drop=True)


def _client_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    extra = sorted({k for row in rows for k in row} - set(CLIENT_NUMERIC) - set(CLIENT_OTHER) - {"kind"})
    columns = [*CLIENT_NUMERIC, *CLIENT_OTHER, *extra]
    df = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
    for col in CLIENT_NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.sort_values("round", kind="stable").reset_index(drop=True)


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read one run directory; only metrics.jsonl is required so crashed runs can still be compared."""
    run_dir = Path(path)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(f"{run_dir}: no metrics.jsonl (is this a run directory?)")
    config = _read_json(run_dir / "config.json") or {}
    summary = _read_json(run_dir / "summary.json")
    global_rows, client_rows = _read_metrics(metrics)
    method = config.get("method") or (summary or {}).get("method") or "unknown"
    return RunRecord(
        name=run_dir.resolve().name,
        method=str(method),
        config=config,
        global_rows=_global_frame(global_rows),
        client_rows=_client_frame(client_rows),
        summary=summary,
        path=run_dir,
    )


def target_column(target: float) -> str:
    """Name of the time-to-target column, which carries the target so tables stay self-explanatory."""
    return f"time to accuracy {target:g} (s)"


def _last(series: pd.Series) -> float:
    """Latest non-null value: a round whose evaluation failed should not hide the one before it."""
    values = series.dropna()
    return float(values.iloc[-1]) if len(values) else math.nan


def _max(series: pd.Series) -> float:
    values = series.dropna()
    return float(values.max()) if len(values) else math.nan


def _mean(series: pd.Series) -> float:
    values = series.dropna()
    return float(values.mean()) if len(values) else math.nan


def _rounds(run: RunRecord) -> int | float:
    if run.summary and isinstance(run.summary.get("rounds_completed"), int):
        return run.summary["rounds_completed"]
    rounds = pd.concat([run.global_rows["round"], run.client_rows["round"]]).dropna()
    return int(rounds.max()) if len(rounds) else math.nan


def _wall_time(run: RunRecord) -> float:
    total = (run.summary or {}).get("total_wall_time_s")
    if isinstance(total, numbers.Real) and not isinstance(total, bool):
        return float(total)
    return _max(run.global_rows["elapsed_s"])


def _time_to_target(run: RunRecord, target: float) -> float:
    reached = run.global_rows[run.global_rows["accuracy"] >= target]
    return float(reached["elapsed_s"].iloc[0]) if len(reached) else math.nan


def _peak_rss(run: RunRecord) -> tuple[float, float]:
    """Per round the largest client footprint (what a device must hold), then mean and max over rounds."""
    clients = run.client_rows.dropna(subset=[wire.PEAK_RSS_MB])
    if len(clients):
        per_round = clients.groupby("round")[wire.PEAK_RSS_MB].max()
    else:
        per_round = run.global_rows["max_client_peak_rss_mb"]
    return _mean(per_round), _max(per_round)


def _personal_accuracy(run: RunRecord) -> float:
    """Mean over the clients of the last round that reported one: PTLS's own quality measure."""
    if wire.PERSONAL_ACCURACY not in run.client_rows:
        return math.nan
    rows = run.client_rows.dropna(subset=[wire.PERSONAL_ACCURACY])
    if not len(rows):
        return math.nan
    last = rows[rows["round"] == rows["round"].max()]
    return float(pd.to_numeric(last[wire.PERSONAL_ACCURACY]).mean())


def _failed_replies(run: RunRecord) -> int:
    if len(run.client_rows):
        return int((run.client_rows["status"] != "ok").sum())
    return int(run.global_rows["clients_failed"].fillna(0).sum())


def comparison_table(runs: Sequence[RunRecord], target: float | None = None) -> pd.DataFrame:
    """One row per run with the figures benchmarks compare: quality, time, memory and traffic."""
    records = []
    for run in runs:
        g, c = run.global_rows, run.client_rows
        rss_mean, rss_max = _peak_rss(run)
        record: dict[str, Any] = {
            COL_RUN: run.name,
            COL_METHOD: run.method,
            COL_ROUNDS: _rounds(run),
            COL_FINAL_ACC: _last(g["accuracy"]),
            COL_BEST_ACC: _max(g["accuracy"]),
            # the server's validation split (data.validation-fraction): what settings are chosen on
            COL_VAL_ACC: _last(g["val_accuracy"]) if "val_accuracy" in g else math.nan,
            COL_F1: _last(g["macro_f1"]),
            COL_PERSONAL_ACC: _personal_accuracy(run),
            COL_PPL: _last(g["perplexity"]),
            COL_WALL: _wall_time(run),
        }
        if target is not None:
            record[target_column(target)] = _time_to_target(run, target)
        record |= {
            COL_RSS_MEAN: rss_mean,
            COL_RSS_MAX: rss_max,
            COL_ACT: _mean(c[wire.ACTIVATION_MB]),
            COL_DOWN: _mean(c[wire.BYTES_DOWN]) / BYTES_PER_MB,
            COL_UP: _mean(c[wire.BYTES_UP]) / BYTES_PER_MB,
            COL_FAILED: _failed_replies(run),
        }
        records.append(record)
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return df
    return df.drop(columns=[col for col in _DROP_WHEN_EMPTY if df[col].isna().all()])


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _format_column(column: pd.Series) -> list[str]:
    """One precision per column, chosen from its largest value, so numbers line up and compare at a glance."""
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return [_text(v) for v in column]
    values = column.dropna().astype(float)
    if (values == values.round()).all():
        decimals = 0
    else:
        largest = values.abs().max()
        decimals = 1 if largest >= 100 else 2 if largest >= 1 else 4
    return ["-" if pd.isna(v) else f"{float(v):.{decimals}f}" for v in column]


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown table, padded so it also reads well printed to a terminal."""
    if df.columns.empty:
        return ""
    headers = [_text(col) for col in df.columns]
    columns = [_format_column(df[col]) for col in df.columns]
    rows = [list(row) for row in zip(*columns, strict=True)] if columns else []
    numeric = [pd.api.types.is_numeric_dtype(df[col]) for col in df.columns]
    widths = [max(3, len(h), *(len(c) for c in cells)) for h, cells in zip(headers, columns, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if num else "-" * w for w, num in zip(widths, numeric, strict=True)]
    return "\n".join([line(headers), line(rule), *(line(r) for r in rows)]) + "\n"


def save_figure(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path


def _quality_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """Accuracy for classifiers, perplexity for language models; both panels when a comparison mixes them."""
    found = [m for m in ("accuracy", "perplexity") if any(r.global_rows[m].notna().any() for r in runs)]
    return found or ["accuracy"]


def _line_plot(runs: Sequence[RunRecord], x: str, x_label: str, title: str) -> Figure:
    metrics = _quality_metrics(runs)
    fig = Figure(figsize=(6.5 * len(metrics), 4.5))
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        for run in runs:
            points = run.global_rows.dropna(subset=[x, metric])
            if len(points):
                ax.plot(points[x], points[metric], marker="o", label=run.label)
        ax.set_title(f"{metric.capitalize()} {title}")
        ax.set_xlabel(x_label)
        if x == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(
            "accuracy (fraction correct)" if metric == "accuracy" else "perplexity (lower is better)"
        )
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return fig


def _bar_plot(runs: Sequence[RunRecord], bars: dict[str, list[float]], y_label: str, title: str) -> Figure:
    fig = Figure(figsize=(max(6.0, 1.6 * len(runs) + 2), 4.5))
    ax: Axes = fig.subplots()
    width = 0.8 / len(bars)
    for i, (name, values) in enumerate(bars.items()):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(runs))]
        ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width, label=name)
    if all(math.isnan(v) for values in bars.values() for v in values):
        ax.text(0.5, 0.5, "no data recorded", transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks(range(len(runs)), [r.label for r in runs], rotation=20, ha="right")
    ax.set_title(title)
    ax.set_ylabel(y_label)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_runs(runs: Sequence[RunRecord], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the four comparison PNGs; figures are built without pyplot so no global backend is changed."""
    if not runs:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(runs)
    return [
        save_figure(
            _line_plot(runs, "round", "round (0 = before training)", "per round"),
            out / "accuracy_vs_round.png",
        ),
        save_figure(
            _line_plot(runs, "elapsed_s", "elapsed time (s)", "over time"), out / "accuracy_vs_time.png"
        ),
        save_figure(
            _bar_plot(
                runs,
                {"mean over rounds": list(table[COL_RSS_MEAN]), "max": list(table[COL_RSS_MAX])},
                "client peak RSS (MB)",
                "Client peak memory (largest client per round)",
            ),
            out / "client_memory.png",
        ),
        save_figure(
            _bar_plot(
                runs,
                {
                    "down (server → client)": list(table[COL_DOWN]),
                    "up (client → server)": list(table[COL_UP]),
                },
                "traffic per client per round (MB)",
                "Communication per client-round",
            ),
            out / "bytes_per_client.png",
        ),
    ]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fedlayer report",
        description="Compare run directories: print a table, write comparison.md/.csv and PNG plots.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: the run dir for one run, else ./report)",
    )
    parser.add_argument(
        "--target", type=float, default=None, help="accuracy whose time to reach is reported (e.g. 0.75)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fedcore.cli.report`` and ``fedlayer report``; 2 on an unreadable run."""
    args = _parse_args(argv)
    try:
        runs = [load_run(path) for path in args.run_dirs]
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out or (args.run_dirs[0] if len(runs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(runs, target=args.target)
    markdown = to_markdown(table)
    print(markdown, end="")
    write_atomic(out / "comparison.md", markdown)
    write_atomic(out / "comparison.csv", table.to_csv(index=False))
    plots = plot_runs(runs, out)
    print(f"wrote {out / 'comparison.md'}, {out / 'comparison.csv'} and {len(plots)} plots to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
