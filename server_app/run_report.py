"""The report every finished run leaves in its run directory: plots and a one-page ``report.md``.

Built from the run's own files with ``fedlayer report``'s reader, table and plots
(``fedcore/cli/report.py``), plus a per-client figure that only makes sense for a single run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from fedcore.cli.report import (
    BYTES_PER_MB,
    RunRecord,
    comparison_table,
    load_run,
    plot_runs,
    save_figure,
    to_markdown,
)
from fedcore.core import wire
from fedcore.core.files import write_atomic
from server_app.run_log import REPORT

#: per-round columns of report.md: (metrics key, title); bytes are shown in MB
_ROUND_COLUMNS = [
    ("round", "round"),
    ("accuracy", "accuracy"),
    ("perplexity", "perplexity"),
    ("loss", "loss"),
    ("elapsed_s", "elapsed (s)"),
    ("round_wall_time_s", "round wall time (s)"),
    (wire.BYTES_DOWN, "MB down"),
    (wire.BYTES_UP, "MB up"),
    ("max_client_peak_rss_mb", "max client peak RSS (MB)"),
    ("clients_ok", "ok"),
    ("clients_failed", "failed"),
]


def write_run_report(run_dir: Path) -> Path:
    """Write the plots and report.md into ``run_dir``; returns the report's path."""
    run = load_run(run_dir)
    plots = [*plot_runs([run], run_dir), save_figure(_per_client_figure(run), run_dir / "clients.png")]
    report = run_dir / REPORT  # last: its presence marks the run finished (run_log.is_finished)
    write_atomic(report, render(run, [plot.name for plot in plots]))
    return report


def render(run: RunRecord, plot_names: list[str]) -> str:
    """report.md: what ran, how it ended, every round, the plots, and every reply that was not used."""
    config = run.config
    setup = ", ".join(
        f"{key} `{config[key]}`" for key in ("method", "model.name", "data.name", "rounds") if key in config
    )
    sections = [
        f"# Run {run.name}\n\n{setup}\n",
        "## Result\n\n" + to_markdown(comparison_table([run])),
        "## Rounds\n\n" + to_markdown(_round_table(run)),
        "## Plots\n\n" + "\n".join(f"![{Path(name).stem}]({name})" for name in plot_names) + "\n",
        "## Replies not aggregated\n\n" + _failures(run),
    ]
    return "\n".join(sections)


def _round_table(run: RunRecord) -> pd.DataFrame:
    rows = run.global_rows
    columns = [(key, title) for key, title in _ROUND_COLUMNS if key in rows and rows[key].notna().any()]
    table = rows[[key for key, _ in columns]].copy()
    for key in (wire.BYTES_DOWN, wire.BYTES_UP):
        if key in table:
            table[key] = table[key] / BYTES_PER_MB
    return table.rename(columns=dict(columns))


def _failures(run: RunRecord) -> str:
    clients = run.client_rows
    bad = clients[clients["status"] != "ok"] if len(clients) else clients
    if not len(bad):
        return "none\n"
    return "".join(
        f"- round {int(row['round'])}, partition {int(row['partition_id'])}: {row['status']} "
        f"({row['reason']})\n"
        for _, row in bad.iterrows()
    )


def _per_client_figure(run: RunRecord) -> Figure:
    """Peak memory (largest over rounds) and traffic (mean per round) of each client, by partition."""
    ok = run.client_rows[run.client_rows["status"] == "ok"] if len(run.client_rows) else run.client_rows
    by_client = ok.groupby("partition_id").agg(
        rss=(wire.PEAK_RSS_MB, "max"), down=(wire.BYTES_DOWN, "mean"), up=(wire.BYTES_UP, "mean")
    )
    fig = Figure(figsize=(11, 4.5))
    memory, traffic = fig.subplots(1, 2)
    partitions = [str(int(p)) for p in by_client.index]
    positions = range(len(partitions))
    memory.bar(positions, by_client["rss"], color="tab:purple")
    memory.set_title("Client peak memory (largest round)")
    memory.set_ylabel("peak RSS (MB)")
    traffic.bar([x - 0.2 for x in positions], by_client["down"] / BYTES_PER_MB, 0.4, label="down")
    traffic.bar([x + 0.2 for x in positions], by_client["up"] / BYTES_PER_MB, 0.4, label="up")
    traffic.set_title("Client traffic per round (mean)")
    traffic.set_ylabel("MB per round")
    traffic.legend(fontsize="small")
    for ax in (memory, traffic):
        ax.set_xticks(list(positions), partitions)
        ax.set_xlabel("client (partition id)")
        ax.grid(axis="y", alpha=0.3)
    return fig
