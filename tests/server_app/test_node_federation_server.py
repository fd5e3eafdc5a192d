"""The server of a node-data federation tests on its own held-out file, or reports no test metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from server_app.federation import evaluate_server, prepare
from tests.conftest import tiny_run_config

NODE_RUN = {"data.name": "node", "data.labels": "rotten,fresh", "output.save-model": False}


def test_without_a_held_out_file_the_server_reports_no_test_metrics(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    state, _, _ = prepare(tiny_run_config(tiny_models["bert"], tmp_path, **NODE_RUN))
    assert len(state.test) == 0 and state.model.config.num_labels == 2
    assert evaluate_server(state) == {}


def test_with_its_own_held_out_file_the_server_tests_on_it(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    held_out = tmp_path / "server-test.jsonl"
    rows = [{"text": f"film {i}", "label": "fresh" if i % 3 else "rotten"} for i in range(12)]
    pd.DataFrame(rows).to_json(held_out, orient="records", lines=True)
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, **NODE_RUN, **{"data.server-test": str(held_out)})
    state, _, _ = prepare(cfg)
    assert sorted(state.test["text"]) == sorted(row["text"] for row in rows)
    metrics = evaluate_server(state)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
