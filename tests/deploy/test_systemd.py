"""systemd units written by `fedlayer deploy systemd`: restart on failure, after the network, the state
directory, and the same checked command the daemon subcommands exec; systemd itself accepts them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from client_app.personal_store import default_personal_dir
from fedcore.deploy.cli import main as deploy


def _unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (Environment= repeats)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, value = line.split("=", 1)
            entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def _dry_run_command(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    """The command `fedlayer deploy superlink|supernode --dry-run` prints, without its environment."""
    assert deploy([*argv, "--dry-run"]) == 0
    words = shlex.split(capsys.readouterr().out)
    return words[next(i for i, word in enumerate(words) if word.startswith("/")) :]  # after NAME=value


def _verify(unit: Path) -> None:
    """`systemd-analyze verify` where systemd is installed: it rejects unknown keys and missing binaries."""
    if shutil.which("systemd-analyze") is None:
        return
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if unit.name in line]
    assert not complaints, result.stderr


def test_supernode_unit_restarts_after_network_and_keeps_personal_layers_in_its_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = tmp_path / "carried-assets"
    assets.mkdir()
    node = ["supernode", "--superlink", "fl.example.org:9092", "--insecure", "--partition-id", "1"]
    node += ["--num-partitions", "3", "--device", "jetson-orin", "--health-port", "9095"]
    node += ["--assets", str(assets)]
    expected = _dry_run_command(capsys, node)
    state = tmp_path / "state"

    assert deploy(["systemd", *node, "--out", str(tmp_path / "units"), "--state-dir", str(state)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "units" / "fedlayer-supernode.service"
    unit = _unit(path)
    assert unit["Service.Restart"] == ["on-failure"]
    assert "network-online.target" in unit["Unit.After"][0].split()
    assert "time-sync.target" in unit["Unit.After"][0].split()
    assert unit["Unit.Wants"] == ["network-online.target"]
    assert unit["Install.WantedBy"] == ["multi-user.target"]
    assert unit["Service.WorkingDirectory"] == [str(state)]
    assert shlex.split(unit["Service.ExecStart"][0]) == expected
    assert expected[expected.index("--host") + 1] == "127.0.0.1"  # the runtime API stays on the device
    assert expected[expected.index("--health-server-address") + 1] == "127.0.0.1:9095"
    env = dict(shlex.split(value)[0].split("=", 1) for value in unit["Service.Environment"])
    assert env["FEDLAYER_CACHE"] == str(assets)
    monkeypatch.setenv("XDG_DATA_HOME", env["XDG_DATA_HOME"])
    assert default_personal_dir().is_relative_to(state)  # what the ClientApp will use under this unit
    _verify(path)


def test_superlink_unit_keeps_its_database_in_the_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    assert deploy(["certs", "--out", str(certs), "--host", "fl.example.org"]) == 0
    state = tmp_path / "state"
    link = ["superlink", "--certs", str(certs), "--advertise", "fl.example.org", "--health-port", "9096"]
    assert deploy(["systemd", *link, "--out", str(tmp_path), "--state-dir", str(state)]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    unit = _unit(path)
    command = shlex.split(unit["Service.ExecStart"][0])
    assert Path(command[0]).name == "flower-superlink"
    assert command[command.index("--database") + 1] == str(state / "superlink.db")
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--enable-supernode-auth" in command
    assert command[command.index("--ssl-certfile") + 1] == str(certs / "server.pem")
    assert unit["Service.Restart"] == ["on-failure"] and unit["Unit.Wants"] == ["network-online.target"]
    assert "XDG_DATA_HOME" not in " ".join(unit["Service.Environment"])
    _verify(path)


def test_unit_for_a_bad_node_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = ["supernode", "--superlink", "fl:9092", "--insecure", "--partition-id", "3"]
    node += ["--num-partitions", "3", "--out", str(tmp_path / "units")]
    assert deploy(["systemd", *node]) == 1
    assert "--partition-id 3 is not in [0, 3)" in capsys.readouterr().err
    assert not (tmp_path / "units").exists()
    missing = ["--partition-id", "0", "--assets", str(tmp_path / "nowhere")]
    assert deploy(["systemd", *node[:4], "--num-partitions", "3", *missing, "--out", str(tmp_path)]) == 1
    assert "fedlayer assets fetch --to DIR" in capsys.readouterr().err


def test_systemd_quoting_keeps_percent_dollar_and_quotes() -> None:
    from fedcore.deploy.systemd import render_unit

    command = ["/bin/flower-supernode", "--node-config", 'a="x y" b=50% c=$HOME']
    text = render_unit("supernode", command, {}, Path("/var/lib/fedlayer"), os.environ.get("USER"))
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start == 'ExecStart=/bin/flower-supernode --node-config "a=\\"x y\\" b=50%% c=$$HOME"'
