"""The example app in examples/layerwise-lora: a stock Flower ClientApp sending partial layers, with
LayerwiseStrategy.start() on the server. Run in process, and on Flower's simulation engine (Ray)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from flwr.simulation import run_simulation

from tests.inprocess_grid import InProcessGrid
from tests.simulate import LOCAL_RAY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "layerwise-lora"))

from layerwise_lora.client_app import app as client_app  # noqa: E402
from layerwise_lora.server_app import run  # noqa: E402
from layerwise_lora.task import build_model, tunable_state  # noqa: E402

from fedcore.core.layers import LayerMap  # noqa: E402


def check_result(result: Result, rounds: int) -> None:
    """Every client trained something; the server's loss fell; each round updated only the trained blocks."""
    metrics = result.evaluate_metrics_serverapp
    assert metrics[rounds]["loss"] < metrics[0]["loss"]
    assert all(result.train_metrics_clientapp[r]["clients_ok"] == 2 for r in range(1, rounds + 1))
    model = build_model()
    group_of = LayerMap(model).group_of
    before, after = tunable_state(model), result.arrays.to_torch_state_dict()
    changed = {group_of(n) for n in before if not torch.equal(before[n], after[n])}
    # two clients, two rounds: partition p trains block (p + round) mod 4 -> blocks 1, 2 and 3, never 0
    assert changed == {"block.1", "block.2", "block.3", "head"}


def test_example_in_process() -> None:
    grid = InProcessGrid(client_app, [{"partition-id": p, "num-partitions": 2} for p in range(2)])
    check_result(run(grid, {"num-server-rounds": 2, "local-steps": 5}), rounds=2)


def test_example_fedadam_moves_only_the_trained_parameters() -> None:
    grid = InProcessGrid(client_app, [{"partition-id": p, "num-partitions": 2} for p in range(2)])
    config = {"num-server-rounds": 2, "local-steps": 5, "server-optimizer": "fedadam"}
    check_result(run(grid, config), rounds=2)


def test_example_on_flowers_simulation_engine() -> None:
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        results.append(run(grid, {"num-server-rounds": 2, "local-steps": 5}))

    run_simulation(server, client_app, num_supernodes=2, backend_config=LOCAL_RAY)
    check_result(results[0], rounds=2)
