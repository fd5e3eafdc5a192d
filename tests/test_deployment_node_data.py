"""Deployment with the nodes' own data: real SuperLink and SuperNodes on 127.0.0.1, no shared dataset.

Each SuperNode names a file in its own folder (`data-path`); the ServerApp is given none of them. The run
completes on the nodes that fit the run's label set, each trains on its own rows and evaluates on its own
held-out rows, the server reports no test metrics of its own, and a node whose file has a label outside
the run's set is left out at start-up with that label named.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.conftest import make_tiny_model_dir
from tests.deployment_helpers import DEPLOY_TOOL, Daemons, metrics_rows, run_app
from tests.test_deployment import RUN_TIMEOUT_S, connect, start_superlink, tiny_run, wait_nodes

#: node -> its verdicts, one row each; "odd" has a label the run does not know
NODE_LABELS = {
    "clinic-a": ["fresh"] * 30 + ["rotten"] * 10,
    "clinic-b": ["fresh"] * 8 + ["rotten"] * 32,
    "odd": ["fresh"] * 20 + ["mixed"] * 20,
}


def write_node_file(folder: Path, labels: list[str]) -> Path:
    folder.mkdir(parents=True)
    texts = ["good fun film" if label == "fresh" else "dull boring plot" for label in labels]
    path = folder / "reviews.csv"
    pd.DataFrame({"comment": texts, "verdict": labels}).to_csv(path, index=False)
    return path


def test_each_node_trains_on_its_own_file_and_the_server_never_reads_one(
    daemons: Daemons, tmp_path: Path
) -> None:
    model = make_tiny_model_dir(tmp_path / "model", "bert")
    fleet, control = start_superlink(daemons, "--insecure")
    files = {name: write_node_file(tmp_path / name, labels) for name, labels in NODE_LABELS.items()}
    for name, path in files.items():
        argv = [*DEPLOY_TOOL, "supernode", "--superlink", f"127.0.0.1:{fleet}", "--insecure"]
        daemons.start(name, [*argv, "--data-path", str(path), "--port", str(daemons.port())])
    connect(daemons, "node-data", control, "--insecure")
    wait_nodes(daemons, "node-data", 3)

    out = tmp_path / "outputs"
    overrides = {
        "data.name": "node",
        "data.text-column": "comment",
        "data.label-column": "verdict",
        "data.labels": "rotten,fresh",
        "rounds": 2,
    }
    _, status = run_app(daemons.env, "node-data", tiny_run(model, out, **overrides), out, RUN_TIMEOUT_S)
    assert status == "finished:completed", daemons.logs_tail()

    rows = metrics_rows(out)
    refused = [r for r in rows if r["kind"] == "node" and r["status"] != "ready"]
    assert len(refused) == 1 and "['mixed'] outside the run's label set" in refused[0]["reason"]
    clients = [r for r in rows if r["kind"] == "client"]
    assert {r["status"] for r in clients} == {"ok"} and len(clients) == 4
    assert sorted({r["examples"] for r in clients}) == [32], "each node's 40 rows less its 8 test rows"
    assert all(0.0 <= r["personal_accuracy"] <= 1.0 for r in clients)
    assert all("accuracy" not in r for r in rows if r["kind"] == "global"), "no server test file"
    server_side = "".join(
        p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")
    )
    assert not any(str(path.parent) in server_side for path in files.values())
