"""deploy/README.md's walk-through run as written: server set up, a new node with its own data joins, a run
on that data, watched to `finished:completed`, all on 127.0.0.1.

The guide marks the blocks of that path (`<!-- walk: server -->` / `<!-- walk: device -->` before a
```bash fence). They run in order with bash, one shell per machine (a folder as its HOME; the working
directory and PATH carry over from block to block), changed only by the substitution table below, so a
guide that drifts from the tool fails here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from fedcore.cli.launch import flower_env
from fedcore.data.assets import cache_root
from tests.conftest import make_tiny_model_dir
from tests.deployment_helpers import (
    REPO_ROOT,
    Daemons,
    flwr_json,
    metrics_rows,
    nodes_online,
    wait_for,
    wait_run,
)
from tests.test_deployment import RUN_TIMEOUT_S, tiny_run

GUIDE = REPO_ROOT / "deploy" / "README.md"
WALKED = re.compile(r"<!-- walk: (server|device) -->\n```bash\n(.*?)\n```", re.DOTALL)
#: the walk's blocks, by machine and their commands' first words: the guide's path, pinned
WALK = [
    (
        "server",
        [
            "git clone",
            ". .venv/bin/activate",
            "fedlayer deploy certs",
            "sudo install",
            "fedlayer deploy superlink",
            "fedlayer deploy connection",
        ],
    ),
    ("device", ["fedlayer deploy keys", "scp", "scp", "fedlayer assets fetch"]),
    ("server", ["fedlayer deploy register"]),
    ("device", ["fedlayer deploy supernode"]),
    ("server", ["flwr supernode ls", "flwr run"]),
    ("server", ["flwr ls", "flwr log"]),
]
#: the node's own rows, with the guide's column names and labels
NODE_ROWS = [("good fun film", "fresh")] * 24 + [("dull boring plot", "rotten")] * 16


@dataclass(frozen=True)
class Block:
    machine: str
    text: str

    def commands(self) -> list[str]:
        """The block's command lines (continuations joined, comments dropped)."""
        joined = self.text.replace("\\\n", " ")
        return [line.split("#")[0].strip() for line in joined.splitlines() if line.split("#")[0].strip()]


def walked_blocks() -> list[Block]:
    return [Block(machine, text) for machine, text in WALKED.findall(GUIDE.read_text())]


def loopback_table(tmp: Path, fleet: int, control: int, node: int, ci_sized: str) -> dict[str, str]:
    """THE substitution table: the guide's two machines become two folders on this one; nothing else
    in the guide's text changes."""
    server = tmp / "server"
    return {
        # a set-up copy of this checkout (server_checkout)
        "git clone ... fedlayer && cd fedlayer && make setup": "cd fedlayer",
        "sudo ": "",  # the test's user owns its temporary folders
        "fl.example.org": "127.0.0.1",
        "0.0.0.0:9092": f"127.0.0.1:{fleet}",
        ":9092": f":{fleet}",  # the guide's ports -> free ports
        ":9093": f":{control}",
        "--control-port 9093": f"--control-port {control}",
        "fedlayer deploy supernode": f"fedlayer deploy supernode --port {node}",  # not the default 9094
        "/var/lib/fedlayer": f"{server}/var/lib/fedlayer",
        "/var/log/fedlayer": f"{server}/var/log/fedlayer",
        "/srv/fedlayer": f"{server}/srv/fedlayer",
        "/srv/clinic": f"{tmp}/device/srv/clinic",
        "scp ": "cp ",
        "operator@server:": f"{server}/",
        "clients.min=10": f"clients.min=1 {ci_sized}",  # one node; CI-sized run (tiny model, 2 rounds)
        "RUN_ID": "$RUN_ID",  # the run's id, read by the test from `flwr ls` as an operator would
    }


def substitute(text: str, table: dict[str, str]) -> str:
    """One pass, longest key first, so no replacement is replaced again."""
    pattern = re.compile("|".join(re.escape(k) for k in sorted(table, key=len, reverse=True)))
    return pattern.sub(lambda match: table[match.group(0)], text)


class Shells:
    """One bash per block; a machine's working directory and PATH carry over to its next block."""

    def __init__(self, daemons: Daemons, tmp: Path, envs: dict[str, dict[str, str]]) -> None:
        self.daemons = daemons
        self.envs = envs
        self.state = {machine: tmp / f"shell-{machine}" for machine in envs}
        for machine, folder in self.state.items():
            folder.mkdir()
            (folder / "cwd").write_text(envs[machine]["HOME"])
            (folder / "path").write_text(envs[machine]["PATH"])

    def run(self, machine: str, text: str, timeout_s: float = 180) -> tuple[int, str]:
        """Run a block under `set -e` (it fails at its first failing command); returns (exit code, output).
        Daemons it starts with `&` stay in its session, which the test's Daemons stop at the end."""
        state = shlex.quote(str(self.state[machine]))
        script = (
            f'set -eo pipefail\ncd "$(cat {state}/cwd)"\nexport PATH="$(cat {state}/path)"\n{text}\n'
            f'pwd > {state}/cwd\nprintf %s "$PATH" > {state}/path\n'
        )
        name = f"block-{len(self.daemons.procs) + 1}-{machine}"
        proc = self.daemons.start(name, ["bash", "-c", script], env=self.envs[machine])
        return proc.wait(timeout=timeout_s), self.daemons.log(name)


def machine_env(home: Path) -> dict[str, str]:
    """A machine's shell: its own HOME and Flower home, this checkout's code, the already fetched assets."""
    home.mkdir(parents=True)
    env = flower_env(home / ".flwr")
    for inherited in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "VIRTUAL_ENV"):
        env.pop(inherited, None)
    env.update(HOME=str(home), PYTHONPATH=str(REPO_ROOT), FEDLAYER_CACHE=str(cache_root()))
    return env


def server_checkout(home: Path) -> None:
    """What `git clone ... && make setup` leaves: the app's files and a `.venv` with it installed."""
    checkout = home / "fedlayer"
    for folder in ("fedcore", "server_app", "client_app"):
        shutil.copytree(REPO_ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", checkout)
    (checkout / ".venv").symlink_to(sys.prefix)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    started = Daemons(tmp_path / "logs", {})
    try:
        yield started
    finally:
        started.stop()


def test_the_guide_marks_the_walk_from_server_to_watched_run() -> None:
    text = GUIDE.read_text()
    walked = [(block.machine, block.commands()) for block in walked_blocks()]
    assert text.count("<!-- walk:") == len(walked), "every walk mark stands right before a ```bash block"
    assert [machine for machine, _ in walked] == [machine for machine, _ in WALK]
    for (machine, commands), (_, expected) in zip(walked, WALK, strict=True):
        assert len(commands) == len(expected), f"{machine} block: {commands}"
        for command, words in zip(commands, expected, strict=True):
            assert command.startswith(words), f"{machine} block: {command!r} is not `{words} ...`"


def test_a_walked_block_with_a_wrong_flag_fails_the_walk(daemons: Daemons, tmp_path: Path) -> None:
    device_block = walked_blocks()[1]
    assert "--prefix" in device_block.text
    shells = Shells(daemons, tmp_path, {"device": machine_env(tmp_path / "device")})
    walked_text = substitute(device_block.text, loopback_table(tmp_path, 9092, 9093, 9094, ""))
    returncode, output = shells.run("device", walked_text.replace("--prefix", "--prefx"))
    assert returncode != 0
    assert "unrecognized arguments: --prefx" in output
    assert not (tmp_path / "server" / "jetson-07-1.pub").exists(), "the block stopped at its first failure"


def test_walking_the_guide_on_loopback_ends_in_a_completed_run_on_the_nodes_own_data(
    daemons: Daemons, tmp_path: Path
) -> None:
    fleet, control, node = daemons.port(), daemons.port(), daemons.port()
    model = make_tiny_model_dir(tmp_path / "model", "bert")
    dropped = {"output.dir", "round.timeout"}  # the guide's command sets both
    tiny = tiny_run(model, tmp_path).replace('"', "'")  # TOML literal strings: the guide's "..." holds them
    ci_sized = " ".join(t for t in tiny.split() if t.split("=")[0] not in dropped)
    table = loopback_table(tmp_path, fleet, control, node, ci_sized)
    envs = {machine: machine_env(tmp_path / machine) for machine in ("server", "device")}
    server_checkout(tmp_path / "server")
    data = tmp_path / "device" / "srv" / "clinic" / "reviews.csv"
    data.parent.mkdir(parents=True)
    pd.DataFrame(NODE_ROWS, columns=["text", "label"]).to_csv(data, index=False)
    outputs = tmp_path / "server" / "srv" / "fedlayer" / "outputs"
    shells = Shells(daemons, tmp_path, envs)

    outputs_of_blocks = []
    for block in walked_blocks():
        returncode, output = shells.run(block.machine, substitute(block.text, table))
        assert returncode == 0, f"{block.machine} block exited {returncode}:\n{block.text}\n---\n{output}"
        outputs_of_blocks.append(output)
        if "fedlayer deploy superlink" in block.text:
            wait_for(lambda: listening(fleet) and listening(control), 90, "the SuperLink listening", 1.0)
        if "fedlayer deploy supernode" in block.text:
            wait_for(lambda: nodes_online(envs["server"], "prod") == 1, 120, "the node online", 2.0)
        if "flwr run" in block.text:
            (run,) = flwr_json(envs["server"], "ls", "prod")["runs"]
            envs["server"]["RUN_ID"] = run["run-id"]
            status = wait_run(envs["server"], "prod", int(run["run-id"]), outputs, RUN_TIMEOUT_S)
            assert status == "finished:completed", daemons.logs_tail()

    assert len(outputs_of_blocks) == len(WALK)
    assert re.search(r'"status":\s*"finished:completed"', outputs_of_blocks[-1]), outputs_of_blocks[-1]
    assert "fedlayer: finished" in outputs_of_blocks[-1], "`flwr log` shows the ServerApp's output"
    assert nodes_online(envs["server"], "prod") == 1
    rows = metrics_rows(outputs)
    clients = [r for r in rows if r["kind"] == "client"]
    assert [(r["round"], r["status"]) for r in clients] == [(1, "ok"), (2, "ok")]
    assert {r["examples"] for r in clients} == {32}, "the node's 40 rows less its 8 test rows"
