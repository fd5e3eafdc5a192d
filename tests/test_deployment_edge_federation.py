"""An edge federation end to end, as operators run one: real SuperLink and SuperNodes on 127.0.0.1.

TLS and node authentication; three devices, each training on the file in its own folder (different label
mixes, no shared dataset, the server given none of the paths); no device names a profile, so each
measures itself on the run's model when the run starts. One of them is slow (it runs a third of the time
and states one CPU thread) and states a memory cap: its measured speed is the lowest and its plans drop
the blocks its memory cannot hold. One runs as its systemd unit says and is killed mid-round; started
again as the unit's ``Restart=on-failure`` would, it rejoins and trains the later rounds. The server
tests the global model on its own held-out file, where it must beat the majority class, and the saved
model loads with ``AutoPeftModelForSequenceClassification`` on a machine without the server's paths and
predicts label names.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedcore.data import assets
from fedcore.mechanisms.layer_dropout import MAX_PLAN_RATE
from tests.deployment_helpers import DEPLOY_TOOL, Daemons, metrics_rows, run_app
from tests.server_app.test_model_export import _card_code
from tests.test_deployment import (
    RUN_TIMEOUT_S,
    connect,
    kill_mid_round_and_restart,
    ok,
    start_superlink,
    tiny_run,
    tool,
    unit_service,
    wait_nodes,
)

LABELS = ["rotten", "fresh"]
GOOD = ["good", "great", "best", "love", "funny", "fun"]
BAD = ["bad", "awful", "worst", "hate", "boring", "dull"]
SUBJECTS = ["the film", "this movie", "the story", "the acting", "the plot"]
#: device -> (fresh rows, rotten rows) in its own file: three different label mixes
NODES = {"clinic-a": (36, 12), "clinic-b": (10, 38), "slow-small": (24, 24)}
#: the server's held-out file: the majority class ("fresh") is 60% of it
SERVER_TEST = (36, 24)
#: the slow device runs this share of the time (its processes are stopped for the rest)
SLOW_SHARE = 0.35
ROUNDS = 4
#: a real pretrained encoder (an embedded asset): what an edge federation fine-tunes
MODEL = "embedded:all-MiniLM-L6-v2"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
BLOCKS = 6


def reviews(fresh: int, rotten: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)

    def text(words: list[str]) -> str:
        return f"{rng.choice(SUBJECTS)} was {rng.choice(words)} and {rng.choice(words)}"

    rows = [(text(GOOD), "fresh") for _ in range(fresh)] + [(text(BAD), "rotten") for _ in range(rotten)]
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["comment", "verdict"])


def write_reviews(path: Path, counts: tuple[int, int], seed: int) -> Path:
    path.parent.mkdir(parents=True)
    reviews(*counts, seed=seed).to_csv(path, index=False)
    return path


class Throttle:
    """Let a process group run for ``share`` of every 10 ms and stop it for the rest, as `cpulimit` does:
    a device with that share of this machine's speed, whatever it measures with."""

    def __init__(self, pid: int, share: float) -> None:
        self.group, self.share = os.getpgid(pid), share
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signum)

    def _run(self) -> None:
        while not self.done.is_set():
            self._signal(signal.SIGSTOP)
            time.sleep(0.01 * (1 - self.share))
            self._signal(signal.SIGCONT)
            time.sleep(0.01 * self.share)

    def __enter__(self) -> Throttle:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self._signal(signal.SIGCONT)


def test_an_edge_federation_on_the_nodes_own_data_and_measured_devices(
    daemons: Daemons, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = tmp_path / "pki"
    ok(tool("certs", "--out", pki / "certs", "--host", "superlink"))
    ok(tool("keys", "--out", pki / "keys", "--count", str(len(NODES))))
    ca = ("--root-certificates", str(pki / "certs" / "ca.crt"))
    fleet, control = start_superlink(daemons, "--certs", pki / "certs")
    connect(daemons, "edge", control, *ca)
    ok(
        tool(
            "register", "edge", *sorted((pki / "keys").glob("*.pub")), "--flwr-home", daemons.env["FLWR_HOME"]
        )
    )

    files = {
        name: write_reviews(tmp_path / name / "reviews.csv", counts, seed)
        for seed, (name, counts) in enumerate(NODES.items())
    }
    node_args = {
        name: [
            "supernode",
            "--superlink",
            f"127.0.0.1:{fleet}",
            *ca,
            "--key",
            str(pki / "keys" / f"supernode-{i}"),
        ]
        + ["--data-path", str(files[name]), "--port", str(daemons.port())]
        for i, name in enumerate(NODES, start=1)
    }
    daemons.start("clinic-a", [*DEPLOY_TOOL, *node_args["clinic-a"]])
    ok(
        tool(
            "systemd",
            *node_args["clinic-b"],
            "--out",
            tmp_path / "units",
            "--state-dir",
            tmp_path / "b-state",
        )
    )
    unit_command, unit_env, restart = unit_service(tmp_path / "units" / "fedlayer-supernode.service")
    assert restart == "on-failure"
    daemons.start("clinic-b", unit_command, {**daemons.env, **unit_env})
    slow = daemons.start(
        "slow-small",
        [*DEPLOY_TOOL, *node_args["slow-small"], "--memory-mb", "1"],
        {**daemons.env, "OMP_NUM_THREADS": "1"},
    )
    wait_nodes(daemons, "edge", len(NODES))

    server_test = write_reviews(tmp_path / "server" / "test.csv", SERVER_TEST, seed=99)
    out = tmp_path / "outputs"
    config = tiny_run(
        assets.resolve(MODEL),
        out,
        method="droppeft",
        rounds=ROUNDS,
        **{
            "model.name": MODEL,
            "data.name": "node",
            "data.text-column": "comment",
            "data.label-column": "verdict",
            "data.labels": ",".join(LABELS),
            "data.server-test": str(server_test),
            "clients.per-round": len(NODES),
            "clients.min": 2,
            "round.timeout": 60.0,
            "train.local-steps": 6,
            "eval.max-examples": sum(SERVER_TEST),
        },
    )
    pool = ThreadPoolExecutor(1)
    try:
        with Throttle(slow.pid, SLOW_SHARE):
            run = pool.submit(run_app, daemons.env, "edge", config, out, RUN_TIMEOUT_S + 300)
            env = {**daemons.env, **unit_env}
            kill_mid_round_and_restart(daemons, "clinic-b", unit_command, env, run)
            _, status = run.result(timeout=1)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert status == "finished:completed", daemons.logs_tail()

    rows = metrics_rows(out)
    ready = {r["node_id"]: r for r in rows if r["kind"] == "node" and r["status"] == "ready"}
    assert len(ready) == len(NODES), rows
    profiles = {node: r["profile"] for node, r in ready.items()}
    assert {p["device-name"] for p in profiles.values()} == {"measured"}, "no profile is named or cycled"
    (slow_node,) = [node for node, p in profiles.items() if p["device-memory-mb"] == 1]
    speeds = {node: p["device-speed"] for node, p in profiles.items()}
    assert speeds[slow_node] < min(s for node, s in speeds.items() if node != slow_node), speeds
    assert profiles[slow_node]["device-memory-blocks"] == 1
    assert all(p["device-memory-blocks"] >= BLOCKS for node, p in profiles.items() if node != slow_node)
    rows_per_node = {sum(counts) for counts in NODES.values()}
    assert {r["examples"] for r in ready.values()} == {n - round(n * 0.2) for n in rows_per_node}, (
        "each node's rows less its own test fifth (data.client-test-fraction)"
    )

    clients = [r for r in rows if r["kind"] == "client"]
    trained = [r for r in clients if r["status"] == "ok"]
    drops = {(r["node_id"], r["round"]): r["plan"]["mean_drop"] for r in trained}
    for (node, _), mean_drop in drops.items():  # a plan per node, from what it measured
        assert mean_drop == (
            pytest.approx(min(MAX_PLAN_RATE, 1 - 1 / BLOCKS), abs=1e-4) if node == slow_node else 0.15
        )
    assert all(r["device_time_s"] == r["compute_time_s"] for r in trained), "real time, not scaled"
    victim_node = next(r["node_id"] for r in clients if r["round"] == 1 and r["status"] != "ok")
    assert (victim_node, ROUNDS) in drops, "the restarted node trains again"

    final = [r for r in rows if r["kind"] == "global"][-1]
    majority = max(SERVER_TEST) / sum(SERVER_TEST)
    assert final["accuracy"] > majority, [r.get("accuracy") for r in rows if r["kind"] == "global"]
    server_side = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".json", ".jsonl", ".md"))
    assert not any(str(path.parent) in server_side for path in files.values()), (
        "a node's path reached the server"
    )

    # another machine: the base under its hub id, no hub access, no fedlayer cache; the card's code loads it
    (saved,) = out.glob("*/model")
    saved_text = "".join(p.read_text() for p in saved.iterdir() if p.suffix in (".json", ".md"))
    assert str(assets.cache_root()) not in saved_text, "the saved model names a path on the server"
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(assets.resolve(MODEL), elsewhere / HUB_ID)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FEDLAYER_CACHE", str(tmp_path / "no-cache"))
    printed, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(_card_code((saved / "README.md").read_text(), saved), namespace)
    assert printed.getvalue().strip() in LABELS
    model, tokenizer = namespace["model"].eval(), namespace["tokenizer"]
    test = pd.read_csv(server_test)
    with torch.no_grad():
        batch = tokenizer(
            list(test["comment"]), padding=True, truncation=True, max_length=32, return_tensors="pt"
        )
        predicted = [model.config.id2label[int(i)] for i in model(**batch).logits.argmax(-1)]
    assert (pd.Series(predicted) == test["verdict"]).mean() > majority
