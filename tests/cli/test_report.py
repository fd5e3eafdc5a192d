"""The report must compute the comparison figures exactly from the files a server writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedcore.cli.report import (
    COL_BEST_ACC,
    COL_DOWN,
    COL_F1,
    COL_FAILED,
    COL_FINAL_ACC,
    COL_PERSONAL_ACC,
    COL_PPL,
    COL_ROUNDS,
    COL_RSS_MAX,
    COL_RSS_MEAN,
    COL_UP,
    COL_VAL_ACC,
    COL_WALL,
    ReportError,
    comparison_table,
    load_run,
    main,
    plot_runs,
    target_column,
    to_markdown,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _global(
    round_: int, elapsed: float, accuracy: float | None, perplexity: float | None = None
) -> dict[str, Any]:
    return {
        "kind": "global",
        "round": round_,
        "accuracy": accuracy,
        "macro_f1": None if accuracy is None else accuracy - 0.1,
        "loss": 0.5,
        "perplexity": perplexity,
        "elapsed_s": elapsed,
        "round_wall_time_s": 30.0,
        "bytes_down": 0,
        "bytes_up": 0,
        "clients_ok": 2,
        "clients_failed": 0,
        "max_client_peak_rss_mb": None,
    }


def _client(
    round_: int, partition: int, rss: float | None, down: int | None, up: int | None, status: str = "ok"
) -> dict[str, Any]:
    return {
        "kind": "client",
        "round": round_,
        "node_id": 100 + partition,
        "partition_id": partition,
        "status": status,
        "reason": None if status == "ok" else "out of memory",
        "examples": 480 if status == "ok" else None,
        "train_loss": 0.6 if status == "ok" else None,
        "wall_time_s": 30.0,
        "compute_time_s": 28.0,
        "peak_rss_mb": rss,
        "activation_mb": 120.0 if status == "ok" else None,
        "bytes_down": down,
        "bytes_up": up,
        "plan": {"layers": [0, 1]},
    }


def _write_run(
    run_dir: Path,
    method: str,
    rows: list[dict[str, Any]],
    summary: dict[str, Any] | None = None,
    task: str = "seq-cls",
) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"method": method, "seed": 0, "model.task": task}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def run_a(tmp_path: Path) -> Path:
    """fedlora: reaches 0.75 at round 2 (70 s); one client fails in round 3."""
    rows = [
        _global(0, 10.0, 0.50),
        _client(1, 0, 900.0, 2_000_000, 500_000),
        _client(1, 1, 1000.0, 2_000_000, 500_000),
        _global(1, 40.0, 0.60),
        _client(2, 0, 950.0, 2_000_000, 500_000),
        _client(2, 1, 1100.0, 2_000_000, 500_000),
        _global(2, 70.0, 0.80),
        _client(3, 0, 800.0, 2_000_000, 500_000),
        _client(3, 1, None, 2_000_000, None, status="failed"),
        {**_global(3, 100.0, 0.78), "personal_accuracy": 0.9, "val_accuracy": 0.7, "note": "text"},
    ]
    summary = {"method": "fedlora", "rounds_completed": 3, "final": rows[-1], "total_wall_time_s": 105.0}
    return _write_run(tmp_path / "run-a", "fedlora", rows, summary)


@pytest.fixture
def run_b(tmp_path: Path) -> Path:
    """fedavg without summary.json (crashed): never reaches 0.75."""
    rows = [
        _global(0, 5.0, 0.50),
        _client(1, 0, 2000.0, 8_000_000, 8_000_000),
        _client(1, 1, 1500.0, 8_000_000, 8_000_000, status="rejected"),
        _global(1, 50.0, 0.55),
        _client(2, 0, 3000.0, 4_000_000, 4_000_000),
        _global(2, 95.0, 0.65),
    ]
    return _write_run(tmp_path / "run-b", "fedavg", rows)


def test_table_values(run_a: Path, run_b: Path) -> None:
    table = comparison_table([load_run(run_a), load_run(run_b)], target=0.75).set_index("run")
    a, b = table.loc["run-a"], table.loc["run-b"]
    assert (a["method"], b["method"]) == ("fedlora", "fedavg")
    assert (a[COL_ROUNDS], b[COL_ROUNDS]) == (3, 2)
    assert a[COL_FINAL_ACC] == pytest.approx(0.78)
    assert a[COL_BEST_ACC] == pytest.approx(0.80)
    assert a[COL_VAL_ACC] == pytest.approx(0.7)
    assert math.isnan(b[COL_VAL_ACC])  # no validation split
    assert a[COL_F1] == pytest.approx(0.68)
    assert b[COL_FINAL_ACC] == pytest.approx(0.65)
    assert a[COL_WALL] == 105.0  # from summary.json
    assert b[COL_WALL] == 95.0  # no summary: last elapsed_s
    assert a[target_column(0.75)] == 70.0
    assert math.isnan(b[target_column(0.75)])
    assert a[COL_RSS_MEAN] == pytest.approx((1000 + 1100 + 800) / 3)
    assert a[COL_RSS_MAX] == 1100.0
    assert b[COL_RSS_MEAN] == pytest.approx((2000 + 3000) / 2)
    assert a[COL_DOWN] == pytest.approx(2.0)
    assert a[COL_UP] == pytest.approx(0.5)  # the failed client's missing upload is not counted as zero
    assert b[COL_DOWN] == pytest.approx(20 / 3)
    assert (a[COL_FAILED], b[COL_FAILED]) == (1, 1)
    assert COL_PPL not in table.columns
    assert COL_PERSONAL_ACC not in table.columns  # no run reported personalised accuracy


def test_personal_accuracy_is_last_round_client_mean(tmp_path: Path) -> None:
    rows = [
        {**_client(1, 0, 900.0, 1, 1), "personal_accuracy": 0.2},
        {**_client(2, 0, 900.0, 1, 1), "personal_accuracy": 0.9},
        {**_client(2, 1, 900.0, 1, 1), "personal_accuracy": 0.7},
        _client(2, 2, 900.0, 1, 1),  # a client without personal layers does not count as 0
        _global(2, 10.0, 0.6),
    ]
    run = load_run(_write_run(tmp_path / "ptls", "droppeft", rows))
    assert comparison_table([run]).iloc[0][COL_PERSONAL_ACC] == pytest.approx(0.8)


def test_target_column_omitted_without_target(run_a: Path) -> None:
    table = comparison_table([load_run(run_a)])
    assert not any(col.startswith("time to") for col in table.columns)


def test_load_keeps_numeric_extras_and_clients(run_a: Path) -> None:
    run = load_run(run_a)
    assert run.name == "run-a"
    assert list(run.global_rows["round"]) == [0, 1, 2, 3]
    assert run.global_rows["personal_accuracy"].iloc[-1] == 0.9
    assert "note" not in run.global_rows.columns
    assert len(run.client_rows) == 6
    assert run.summary is not None and run.config["seed"] == 0


def test_markdown_one_line_per_run(run_a: Path, run_b: Path) -> None:
    markdown = to_markdown(comparison_table([load_run(run_a), load_run(run_b)], target=0.75))
    lines = markdown.splitlines()
    assert len(lines) == 4  # header, rule, two runs
    assert lines[0].startswith("| run ")
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert [row[0] for row in cells[2:]] == ["run-a", "run-b"]
    target_at = cells[0].index(target_column(0.75))
    assert (cells[2][target_at], cells[3][target_at]) == ("70", "-")  # NaN rendered as "-"


def test_plots_are_png(run_a: Path, run_b: Path, tmp_path: Path) -> None:
    paths = plot_runs([load_run(run_a), load_run(run_b)], tmp_path / "plots")
    names = {p.name for p in paths}
    assert names == {
        "accuracy_vs_round.png",
        "accuracy_vs_time.png",
        "client_memory.png",
        "bytes_per_client.png",
    }
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1024


def test_broken_line_names_line_number(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "broken", "fedlora", [_global(0, 1.0, 0.5), _global(1, 2.0, 0.6)])
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "global", "round": 2,\n')
    with pytest.raises(ReportError, match=r"metrics\.jsonl: line 3"):
        load_run(run_dir)


def test_missing_metrics_names_path(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="empty"):
        load_run(tmp_path / "empty")


def test_causal_lm_reports_perplexity(tmp_path: Path) -> None:
    rows = [_global(0, 1.0, None, 40.0), _client(1, 0, 500.0, 10, 10), _global(1, 9.0, None, 25.5)]
    run = load_run(_write_run(tmp_path / "lm", "fedlora", rows, task="causal-lm"))
    table = comparison_table([run], target=0.75)
    assert table[COL_PPL].iloc[0] == 25.5
    assert COL_FINAL_ACC not in table.columns and COL_BEST_ACC not in table.columns
    assert COL_VAL_ACC not in table.columns
    assert math.isnan(table[target_column(0.75)].iloc[0])
    assert len(plot_runs([run], tmp_path / "plots")) == 4


def test_main_writes_outputs(
    run_a: Path, run_b: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main([str(run_a), str(run_b), "--out", str(out), "--target", "0.75"]) == 0
    assert "run-a" in capsys.readouterr().out
    for name in ("comparison.md", "comparison.csv", "accuracy_vs_round.png", "bytes_per_client.png"):
        assert (out / name).is_file()
    assert not list(out.glob(".*.tmp"))


def test_main_single_run_defaults_to_run_dir(run_a: Path) -> None:
    assert main([str(run_a)]) == 0
    assert (run_a / "comparison.md").is_file()


def test_main_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
