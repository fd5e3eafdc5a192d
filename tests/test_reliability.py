"""Failure behaviour: kill-and-resume, and clients that fail, stall or send garbage (real Ray simulations)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.torch import load_file

from client_app.app import info
from client_app.executor import execute_train
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.wire import received_state, state_to_arrays
from server_app.checkpoint import CheckpointError, load_checkpoint
from tests.conftest import tiny_run_config
from tests.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
#: the straggler sleeps far past the deadline, which itself leaves good clients ample time on a busy CPU
STALL_S = 90.0
DEADLINE_S = 60.0


def final_global_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoint" / "global.safetensors")


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _misbehave(msg: Message, context: Context) -> Message:
    """Partition 0-2 behave; 3 raises, 4 sends NaN, 5 sends a wrong shape, 6 sends garbage, 7 stalls."""
    partition = int(context.node_config[wire.NODE_PARTITION_ID])
    if partition == 3:
        raise RuntimeError("injected client crash")
    if partition == 7:
        time.sleep(STALL_S)
    content = execute_train(msg.content, dict(context.node_config))
    update = received_state(content.array_records[wire.UPDATE])
    name = sorted(update)[0]
    if partition == 4:
        update[name] = torch.full_like(update[name], math.nan)
    elif partition == 5:
        update[name] = torch.zeros(*update[name].shape, 2)
    elif partition == 6:
        del content[wire.TRAIN_METRICS]
    content[wire.UPDATE] = state_to_arrays(update)
    return Message(content, reply_to=msg)


faulty_client = ClientApp()
faulty_client.train()(_misbehave)
faulty_client.query(wire.INFO_QUERY)(info)


def test_bad_clients_are_recorded_and_do_not_touch_the_aggregate(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The global model after a round with 5 bad clients equals the one from the 3 good clients alone."""
    common = {"clients.num-partitions": 8, "clients.min": 3, "round.timeout": DEADLINE_S, "rounds": 1}
    faulty_cfg = tiny_run_config(tiny_models["bert"], tmp_path / "faulty", **common)
    faulty = simulate(faulty_cfg, supernodes=8, client_app=faulty_client)
    good_only = simulate(tiny_run_config(tiny_models["bert"], tmp_path / "good", **common), supernodes=3)

    status = {r["partition_id"]: (r["status"], r["reason"]) for r in rows(faulty) if r["kind"] == "client"}
    assert [status[p][0] for p in range(3)] == ["ok"] * 3
    assert status[3][0] == "failed" and "injected client crash" in status[3][1]
    assert status[4][0] == "rejected" and "NaN" in status[4][1]
    assert status[5][0] == "rejected" and "shape" in status[5][1]
    assert status[6][0] == "rejected" and "malformed" in status[6][1]
    assert status[7][0] == "timeout"
    expected = final_global_state(good_only)
    actual = final_global_state(faulty)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_killed_server_resumes_to_the_same_final_state(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Kill the whole simulation once round 1 is checkpointed, resume, compare with an uninterrupted run."""
    uninterrupted = simulate(tiny_run_config(tiny_models["bert"], tmp_path / "whole", rounds=3), supernodes=2)

    cfg = tiny_run_config(tiny_models["bert"], tmp_path / "killed", rounds=3)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(cfg.to_flat()))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "simulate.py"), str(config_file), "2"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            found = list((tmp_path / "killed").glob("*/checkpoint/checkpoint.json"))
            if found and json.loads(found[0].read_text())["round"] >= 1:
                break
            assert process.poll() is None, "the federation ended before it could be killed"
            time.sleep(0.1)
        else:
            pytest.fail("no checkpoint within 240 s")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    run_dir = found[0].parent.parent
    assert load_checkpoint(run_dir).round < 3

    resumed_cfg = RunConfig.from_flat({**cfg.to_flat(), "resume-from": str(run_dir)})
    assert simulate(resumed_cfg, supernodes=2) == run_dir
    expected, actual = final_global_state(uninterrupted), final_global_state(run_dir)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    rounds_logged = [(r["kind"], r["round"], r.get("partition_id")) for r in rows(run_dir) if "round" in r]
    assert sorted(rounds_logged, key=str) == sorted(
        [(r["kind"], r["round"], r.get("partition_id")) for r in rows(uninterrupted) if "round" in r], key=str
    )


#: the paper's bandit over two arms (one arm, the default, leaves the bandit nothing to learn)
TWO_ARMS = {"droppeft.rates": "0.15,0.3"}


def test_resumed_droppeft_continues_its_bandit(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The dropout bandit's counts survive a restart: round 2 after resume has seen both rounds' rewards."""
    first = simulate(
        tiny_run_config(tiny_models["bert"], tmp_path, rounds=1, method="droppeft", **TWO_ARMS), supernodes=2
    )
    before = load_checkpoint(first).planner_state["bandit"]["devices"]
    assert {device: stats["updates"] for device, stats in before.items()} == {"client-0": 1, "client-1": 1}
    extended = tiny_run_config(tiny_models["bert"], tmp_path, rounds=2, method="droppeft", **TWO_ARMS)
    simulate(RunConfig.from_flat({**extended.to_flat(), "resume-from": str(first)}), supernodes=2)
    after = load_checkpoint(first).planner_state["bandit"]["devices"]
    assert {device: stats["updates"] for device, stats in after.items()} == {"client-0": 2, "client-1": 2}


def test_incompatible_or_corrupt_checkpoint_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    run_dir = simulate(tiny_run_config(tiny_models["bert"], tmp_path, rounds=1), supernodes=2)
    other_method = tiny_run_config(tiny_models["bert"], tmp_path, rounds=2, method="fedavg")
    with pytest.raises(CheckpointError, match="method"):
        simulate(RunConfig.from_flat({**other_method.to_flat(), "resume-from": str(run_dir)}), supernodes=2)
    (run_dir / "checkpoint" / "global.safetensors").write_bytes(b"not a tensor file")
    again = tiny_run_config(tiny_models["bert"], tmp_path, rounds=2)
    with pytest.raises(CheckpointError, match="corrupt"):
        simulate(RunConfig.from_flat({**again.to_flat(), "resume-from": str(run_dir)}), supernodes=2)
