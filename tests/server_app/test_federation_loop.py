"""fedlayer's own round loop on an in-process grid (no Ray): it plans and aggregates through
LayerwiseStrategy, and its messages carry the plan, the run's identity and the tensors."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from flwr.app import Message

from client_app.app import app as client_app
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.plan import LayerPlan
from fedcore.core.wire import config_to_dict
from server_app.checkpoint import load_checkpoint
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


class ServerKilled(RuntimeError):
    """Stands for a kill of the server process."""


class KilledAtRound(InProcessGrid):
    """An in-process grid whose server dies as it sends the train messages of ``round_number``."""

    def __init__(self, nodes: list[dict[str, object]], round_number: int) -> None:
        super().__init__(client_app, nodes)
        self.round_number = round_number

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:
            plan = message.content.config_records.get(wire.PLAN)
            if plan is not None and config_to_dict(plan)["round"] == self.round_number:
                raise ServerKilled(f"server killed in round {self.round_number}")
        return super().push_messages(messages)


def test_an_interrupted_fedadam_run_resumed_equals_the_uninterrupted_one(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The server optimiser's moments travel through the checkpoint: a FedAdam run killed in round 3 and
    resumed ends with the uninterrupted run's model, moments and accuracy, bit for bit."""
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]

    def config(output: str, **extra: object) -> RunConfig:
        settings = {"server.optimizer": "fedadam", "server.lr": 0.05, "output.save-model": False}
        return tiny_run_config(tiny_models["bert"], tmp_path / output, rounds=3, **settings, **extra)

    whole = load_checkpoint(run_federation(InProcessGrid(client_app, nodes), config("whole")))
    with pytest.raises(ServerKilled):
        run_federation(KilledAtRound(nodes, 3), config("killed"))
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert load_checkpoint(run_dir).round == 2
    resumed_cfg = config("killed", **{"resume-from": str(run_dir)})
    resumed = load_checkpoint(run_federation(InProcessGrid(client_app, nodes), resumed_cfg))

    assert resumed.round == whole.round == 3
    assert whole.optimizer_state, "FedAdam's moments are in the checkpoint"
    for saved, expected in (
        (resumed.global_state, whole.global_state),
        (resumed.optimizer_state, whole.optimizer_state),
    ):
        assert saved.keys() == expected.keys()
        assert all(torch.equal(saved[name], expected[name]) for name in expected)
    assert resumed.best_accuracy == whole.best_accuracy
