"""fedlayer's own round loop on an in-process grid (no Ray): it plans and aggregates through
LayerwiseStrategy, and its messages carry the plan, the run's identity and the tensors."""

from __future__ import annotations

import json
from pathlib import Path

from client_app.app import app as client_app
from fedcore.core import wire
from fedcore.core.plan import LayerPlan
from fedcore.core.wire import config_to_dict
from server_app.federation import CLIENT_KEYS, run_federation
from tests.conftest import tiny_run_config
from tests.inprocess_grid import InProcessGrid


def test_the_loop_runs_its_rounds_through_the_strategy(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="droppeft", **{"train.batch-size": 4})
    grid = InProcessGrid(client_app, [{"partition-id": p, "num-partitions": 2} for p in range(2)])
    run_dir = run_federation(grid, cfg)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    clients = [r for r in rows if r.get("kind") == "client"]
    assert [(r["round"], r["status"]) for r in clients] == [(1, "ok"), (1, "ok"), (2, "ok"), (2, "ok")]
    assert all(r["samples_processed"] == 2 * 4 for r in clients), "2 steps of the plan's batch size"
    assert [r["aggregated"] for r in rows if r.get("kind") == "global" and r["round"]] == [True, True]

    train = [m.content for m in grid.sent if wire.PLAN in m.content.config_records]
    assert len(train) == 4
    for content in train:
        assert set(content.config_records) == {wire.PLAN, wire.RUN_CONFIG, wire.RUN}
        assert set(content.array_records) == {wire.GLOBAL}
        plan = LayerPlan.from_dict(config_to_dict(content.config_records[wire.PLAN]))
        assert plan.batch_size == 4 and plan.drop_rates
        run_config = config_to_dict(content.config_records[wire.RUN_CONFIG])
        assert run_config and all(key.startswith(CLIENT_KEYS) for key in run_config)
        assert "train.batch-size" not in run_config
