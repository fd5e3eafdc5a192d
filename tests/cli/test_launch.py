"""What ``fedlayer simulate`` hands to Flower and what it shows of Flower's output (no run is started)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcore.cli.flower_output import shown_line
from fedcore.cli.launch import (
    LaunchError,
    default_flwr_home,
    ensure_local_connection,
    flower_env,
    run_command,
    stop_superlink,
    stream,
    superlink_pids,
)

#: flwr 1.39's own default config.toml
_FLOWER_DEFAULT_CONFIG = """[superlink]
default = "local"

[superlink.supergrid]
address = "api.flower.ai"

[superlink.local]
address = ":local:"
"""
_WARNING = "\x1b[93mWARNING \x1b[0m:   "


def test_the_environment_disables_reinstalls_and_spinning_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = flower_env(tmp_path)
    assert env["FLWR_HOME"] == str(tmp_path)
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert flower_env(tmp_path)["OMP_WAIT_POLICY"] == "ACTIVE"


def test_runs_go_to_the_users_flower_home_unless_told_otherwise(tmp_path: Path) -> None:
    assert default_flwr_home({"FLWR_HOME": str(tmp_path)}) == tmp_path
    assert default_flwr_home({}) == Path.home() / ".flwr"


def test_the_federation_size_and_cpu_share_are_passed_to_flower() -> None:
    command = run_command(Path("/app"), 4, 2.0, "rounds=3")
    assert command[:4] == ["flwr", "run", "/app", "local"]
    assert command[command.index("--federation-config") + 1] == "num-supernodes=4 client-resources-num-cpus=2"
    assert command[-2:] == ["--run-config", "rounds=3"]
    assert "--run-config" not in run_command(Path("/app"), 4, 0.5, "")


def test_a_home_without_config_gets_a_local_connection_and_flowers_own_config_is_kept(tmp_path: Path) -> None:
    ensure_local_connection(tmp_path / "new")
    assert 'address = ":local:"' in (tmp_path / "new" / "config.toml").read_text()
    (tmp_path / "config.toml").write_text(_FLOWER_DEFAULT_CONFIG)
    ensure_local_connection(tmp_path)
    assert (tmp_path / "config.toml").read_text() == _FLOWER_DEFAULT_CONFIG


def test_a_config_without_the_local_connection_is_refused_with_the_fix(tmp_path: Path) -> None:
    mine = '[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "10.0.0.2:9093"\n'
    (tmp_path / "config.toml").write_text(mine)
    with pytest.raises(LaunchError, match=r'\[superlink.local\]\naddress = ":local:"(.|\n)*--flwr-home'):
        ensure_local_connection(tmp_path)
    assert (tmp_path / "config.toml").read_text() == mine


@pytest.mark.parametrize(
    "line",
    [
        f"{_WARNING}Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.\n",
        "\x1b[92mINFO \x1b[0m:      To change federation size, use the following command:\n",
        "INFO :      \tflwr federation simulation-config default <superlink> --num-supernodes <N>\n",
        f"(ClientAppActor pid=4242) {_WARNING}Manually terminating ClientAppActor\n",
    ],
)
def test_flowers_known_notices_are_dropped(line: str) -> None:
    assert shown_line(line, colour=True) is None
    assert shown_line(line, colour=False) is None


def test_colour_codes_stay_on_a_terminal_only_and_other_lines_pass() -> None:
    line = "\x1b[92mINFO \x1b[0m:      Federation `default` (4 simulated SuperNodes)\n"
    assert shown_line(line, colour=True) == line
    assert shown_line(line, colour=False) == "INFO :      Federation `default` (4 simulated SuperNodes)\n"
    assert shown_line("[round 3/5] 4/4 replies in\n", colour=False) == "[round 3/5] 4/4 replies in\n"


def test_streamed_output_to_a_file_has_no_colour_codes_and_no_known_notices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    notice = "Since flwr 1.32, default simulated SuperNodes changed from 10 to 2."
    script = (
        "import sys\n"
        f"print('\\x1b[93mWARNING \\x1b[0m:   {notice}')\n"
        "print('\\x1b[92mINFO \\x1b[0m:      Starting round 1', file=sys.stderr)\n"
    )
    stream([sys.executable, "-c", script], {})
    assert capsys.readouterr().out == "INFO :      Starting round 1\n"


def test_a_local_superlink_is_found_for_its_home_and_for_any_home_and_stopped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log_file = home / "local-superlink" / "superlink.log"
    # a stand-in with a managed SuperLink's command line: `... flower-superlink ... --log-file <home>/...`
    sleeper = "import time; time.sleep(60)"
    stand_in = subprocess.Popen(
        [sys.executable, "-c", sleeper, "flower-superlink", "--log-file", str(log_file)]
    )
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd (its command line is readable)
        while stand_in.pid not in superlink_pids(home) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stand_in.pid in superlink_pids(home)
        assert stand_in.pid in superlink_pids(None)
        assert stand_in.pid not in superlink_pids(tmp_path / "another-home")
        stop_superlink(home, grace_s=5)
        assert stand_in.wait(timeout=5) != 0
    finally:
        stand_in.kill()
