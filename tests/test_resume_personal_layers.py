"""Personal layers survive a server crash: a resumed DropPEFT run ends bit-identical to an uninterrupted
one, in its global state and in every client's personal layers (real Ray simulations).

The runs use fixed drop rates: the dropout bandit's reward divides by the measured training time, so
its arm choices, and with them the model, differ between any two runs, interrupted or not.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from safetensors.torch import load_file

from client_app.app import app as client_app
from client_app.personal_store import default_personal_dir
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.wire import config_to_dict
from server_app.checkpoint import load_checkpoint
from server_app.federation import run_federation
from server_app.run_log import RUN_ID
from tests.conftest import tiny_run_config
from tests.simulate import simulate

ROUNDS = 3
FIXED_DROP = {"drop.mode": "fixed", "drop.mean-rate": 0.3, "ptls.fraction": 0.25}


class ServerKilled(RuntimeError):
    """Stands for a SIGKILL of the server process."""


class KilledAfterTraining:
    """A Grid whose server dies once the clients have trained ``round_number``, before it is checkpointed."""

    def __init__(self, grid: Grid, round_number: int) -> None:
        self._grid, self._round = grid, round_number
        self._awaited: set[str] = set()  # ids of the fatal round's messages whose replies are still out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self._grid.push_messages(messages))
        plans = [m.content.config_records[wire.PLAN] for m in messages if wire.PLAN in m.content]
        if any(config_to_dict(plan)["round"] == self._round for plan in plans):
            self._awaited = {i for i in ids if i}
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        if self._awaited:
            self._awaited -= {reply.metadata.reply_to_message_id for reply in replies}
            if not self._awaited:
                raise ServerKilled(f"server killed after the clients trained round {self._round}")
        return replies


def run_until_killed(cfg: RunConfig, round_number: int) -> None:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(KilledAfterTraining(grid, round_number), cfg)  # type: ignore[arg-type]

    with pytest.raises(Exception, match="server killed"):
        run_simulation(server, client_app, num_supernodes=2, backend_config={"init_args": {"num_cpus": 2}})


def personal_layers(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Each client's newest personal-layer file, by partition and round."""
    store = default_personal_dir() / (run_dir / RUN_ID).read_text().strip()
    return {
        f"{folder.name}/{path.name}": load_file(path)
        for folder in sorted(store.iterdir())
        for path in sorted(folder.iterdir())
    }


def test_a_resumed_droppeft_run_is_bit_identical_including_personal_layers(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    def config(output: str) -> RunConfig:
        return tiny_run_config(
            tiny_models["bert"], tmp_path / output, rounds=ROUNDS, method="droppeft", **FIXED_DROP
        )

    whole = simulate(config("whole"), supernodes=2)

    killed_cfg = config("killed")
    run_until_killed(killed_cfg, round_number=2)
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert load_checkpoint(run_dir).round == 1
    assert any(name.endswith("round-2.safetensors") for name in personal_layers(run_dir)), (
        "the clients stored layers of the round the server never checkpointed"
    )
    resumed = RunConfig.from_flat({**killed_cfg.to_flat(), "resume-from": str(run_dir)})
    assert simulate(resumed, supernodes=2) == run_dir

    expected, actual = personal_layers(whole), personal_layers(run_dir)
    assert sorted(expected) == sorted(actual)
    assert {f"partition-{p}/round-{ROUNDS}.safetensors" for p in (0, 1)} <= set(expected)
    assert all(expected[f].keys() == actual[f].keys() for f in expected)
    assert any(expected[f] for f in expected), "DropPEFT kept personal layers"
    for file, tensors in expected.items():
        assert all(torch.equal(tensors[name], actual[file][name]) for name in tensors), file
    whole_state = load_file(whole / "checkpoint" / "global.safetensors")
    resumed_state = load_file(run_dir / "checkpoint" / "global.safetensors")
    assert whole_state.keys() == resumed_state.keys()
    assert all(torch.equal(whole_state[name], resumed_state[name]) for name in whole_state)
