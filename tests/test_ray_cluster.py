"""A federation on a multi-node Ray cluster: Flower's simulation engine attaches to a running cluster (a
head and a second node process, both on loopback) and places client actors on both nodes.

This is README's "multi-node Ray cluster" recipe with both nodes on one machine; across machines only the
addresses change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.app import info, train
from fedcore.core import wire
from tests.conftest import tiny_run_config
from tests.simulate import simulate


def app_marking_its_ray_node(marks: Path) -> ClientApp:
    """The real ClientApp, which also leaves a file named after the Ray node each training reply ran on."""
    app = ClientApp()

    @app.train()
    def train_and_mark(msg: Message, context: Context) -> Message:
        import ray

        (marks / ray.get_runtime_context().get_node_id()).touch()
        return train(msg, context)

    @app.query(wire.INFO_QUERY)
    def answer_info(msg: Message, context: Context) -> Message:
        return info(msg, context)

    return app


def test_clients_run_on_both_nodes_of_a_ray_cluster(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        node_ids = {cluster.head_node.node_id, second.node_id}
        assert len(node_ids) == 2
        marks = tmp_path / "nodes"
        marks.mkdir()
        cfg = tiny_run_config(tiny_models["bert"], tmp_path / "out", method="fedlora", rounds=2)
        # as in README: the engine finds the cluster through RAY_ADDRESS (no init_args of its own); one
        # CPU per client and per node, so the engine's two actors can only sit one on each node
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        backend = {"client_resources": {"num_cpus": 1}}
        run_dir = simulate(
            cfg, supernodes=2, client_app=app_marking_its_ray_node(marks), backend_config=backend
        )
    finally:
        cluster.shutdown()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows if r["kind"] == "client"] == ["ok"] * 4
    assert {p.name for p in marks.iterdir()} == node_ids, "client actors ran on both Ray nodes"
