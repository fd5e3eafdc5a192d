"""The live progress lines of a round, from a real Ray simulation with one client that always fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.app import info, train
from fedcore.core import wire
from server_app.progress import RoundStatus, duration
from tests.conftest import tiny_run_config
from tests.simulate import simulate


def _fails_on_partition_2(msg: Message, context: Context) -> Message:
    if int(context.node_config[wire.NODE_PARTITION_ID]) == 2:
        raise RuntimeError("injected client crash")
    return train(msg, context)


one_bad_client = ClientApp()
one_bad_client.train()(_fails_on_partition_2)
one_bad_client.query(wire.INFO_QUERY)(info)


def test_each_round_shows_replies_failures_and_eta_before_its_table_row(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, rounds=2)
    simulate(cfg, supernodes=3, client_app=one_bad_client)
    out = capsys.readouterr().out
    assert "\r" not in out  # whole lines only: log files and `flwr run --stream` stay readable
    lines = out.splitlines()
    for round_number in (1, 2):
        progress = [i for i, line in enumerate(lines) if line.startswith(f"[round {round_number}/2] ")]
        table_row = next(i for i, line in enumerate(lines) if re.match(rf"\s+{round_number} ", line))
        assert progress and max(progress) < table_row
        assert lines[progress[0]].startswith(f"[round {round_number}/2] 0/3 replies in, 0 failed, ")
        assert lines[progress[-1]].startswith(f"[round {round_number}/2] 3/3 replies in, 1 failed, ")
    first_round_start = next(line for line in lines if line.startswith("[round 1/2] 0/3"))
    second_round_start = next(line for line in lines if line.startswith("[round 2/2] 0/3"))
    assert first_round_start.endswith("eta after the first round")
    # the second round's ETA comes from the first round's duration
    assert re.search(r"eta (\d+ s|\d+ min \d\d s)$|eta overdue", second_round_start)


def test_a_timed_out_round_names_the_missing_replies() -> None:
    status = RoundStatus("round 4/5", expected=10, received=8, failed=1, elapsed_s=900.0, timed_out=True)
    assert status.line() == (
        "[round 4/5] 8/10 replies in, 1 failed, 2 without reply by the deadline, 15 min 00 s elapsed"
    )


def test_eta_counts_down_from_the_earlier_rounds_and_then_says_overdue() -> None:
    status = RoundStatus("round 2/3", expected=4, received=1, elapsed_s=50.0, estimate_s=170.0)
    assert status.line().endswith("50 s elapsed, eta 2 min 00 s")
    status.elapsed_s = 200.0
    assert status.line().endswith("eta overdue (earlier rounds took 2 min 50 s)")
    assert duration(3725) == "1 h 02 min"
