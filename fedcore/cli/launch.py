"""Run the app as a local Ray simulation through ``flwr run``, the way users run Flower apps.

Wraps the traps of flwr 1.39: the managed local SuperLink is detached and outlives the run (we stop
it), it would install the app's dependencies into a fresh env on every run unless told not to, and
``flwr run --stream`` exits 0 even when the run failed (we read the run's status with ``flwr ls``).
The run goes to the user's Flower home (``FLWR_HOME``, else ``~/.flwr``), so ``flwr ls`` and ``flwr log``
in the user's shell list it; ``--flwr-home`` keeps a run apart. Flower's output is passed on through
``flower_output`` (known notices dropped, colour codes only on a terminal).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from fedcore import known_warnings
from fedcore.cli.flower_output import shown_line

_CONNECTION = "local"
_CONFIG_TOML = f"""[superlink]
default = "{_CONNECTION}"

[superlink.{_CONNECTION}]
address = ":local:"
"""


class LaunchError(RuntimeError):
    """The local Flower set-up cannot take the run; the message says what to change."""


def default_flwr_home(env: dict[str, str]) -> Path:
    """The Flower home ``flwr`` itself uses in that environment."""
    return Path(env["FLWR_HOME"]) if env.get("FLWR_HOME") else Path.home() / ".flwr"


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    # clients sleep rather than spin when their cores are shared (client_app.cpu_share); a user's value wins
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
        # Flower's simulation process starts Ray: its known notices are silenced there
        PYTHONWARNINGS=known_warnings.as_pythonwarnings(env.get("PYTHONWARNINGS", "")),
        # flwr starts `flower-superlink` by name: it must come from this environment
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def superlink_pids(flwr_home: Path | None) -> list[int]:
    """PIDs of Flower's managed local SuperLink of this FLWR_HOME, or of any home when None (its files'
    paths are on its command line; every home's listens on the same ports)."""
    marker = str(flwr_home / "local-superlink") if flwr_home else f"{os.sep}local-superlink{os.sep}"
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmdline and marker in cmdline:
            pids.append(int(proc.name))
    return pids


def stop_superlink(flwr_home: Path | None, grace_s: float = 10.0) -> None:
    pids = superlink_pids(flwr_home)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and superlink_pids(flwr_home):
        time.sleep(0.2)
    for pid in superlink_pids(flwr_home):
        os.kill(pid, signal.SIGKILL)


def latest_run_status(env: dict[str, str]) -> tuple[int, str] | None:
    """(run id, status) of the newest run on the local SuperLink; None if no run was submitted."""
    out = subprocess.run(
        ["flwr", "ls", _CONNECTION, "--format", "json"], env=env, capture_output=True, text=True, check=False
    )
    try:
        runs = json.loads(out.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        raise RuntimeError(f"cannot read run status from `flwr ls`: {out.stdout or out.stderr}") from None
    if not runs:
        return None
    newest = max(runs, key=lambda r: str(r.get("pending-at", "")))  # run ids are random, not ordered
    return int(newest["run-id"]), str(newest["status"])


def ensure_local_connection(flwr_home: Path) -> None:
    """A ``local`` connection to Flower's managed local SuperLink in the home's config.toml (created with
    only that if the home has none; an existing config is never rewritten)."""
    config = flwr_home / "config.toml"
    if not config.exists():
        flwr_home.mkdir(parents=True, exist_ok=True)
        config.write_text(_CONFIG_TOML)
        return
    try:
        address = tomllib.loads(config.read_text())["superlink"][_CONNECTION]["address"]
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        address = None
    if address != ":local:":
        raise LaunchError(
            f"{config} has no connection '{_CONNECTION}' to Flower's local SuperLink: add\n"
            f'[superlink.{_CONNECTION}]\naddress = ":local:"\n'
            "to it, or pass --flwr-home DIR to run in a Flower home of its own"
        )


def active_runs(env: dict[str, str]) -> list[int]:
    """Ids of the runs the local SuperLink has not finished."""
    out = subprocess.run(
        ["flwr", "ls", _CONNECTION, "--format", "json"], env=env, capture_output=True, text=True, check=False
    )
    try:
        runs = json.loads(out.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        return []
    return [int(r["run-id"]) for r in runs if not str(r.get("status", "")).startswith("finished")]


def restart_superlink(env: dict[str, str]) -> None:
    """Stop a local SuperLink left running (a run would go to it, in the environment it was started with:
    Flower starts a new one with ours), unless it still serves a run."""
    if not superlink_pids(None):
        return
    busy = active_runs(env)
    if busy:
        raise LaunchError(
            f"Flower's local SuperLink still serves run(s) {busy}: wait for them (`flwr ls`) or stop them "
            f"(`flwr stop RUN_ID {_CONNECTION}`); one local SuperLink runs at a time on a machine"
        )
    stop_superlink(None)


def run_command(app_dir: Path, supernodes: int, cpus: float, run_config: str) -> list[str]:
    command = [
        "flwr",
        "run",
        str(app_dir),
        _CONNECTION,
        "--stream",
        "--federation-config",
        f"num-supernodes={supernodes} client-resources-num-cpus={cpus:g}",
    ]
    return command + (["--run-config", run_config] if run_config else [])


def stream(command: list[str], env: dict[str, str]) -> None:
    """Run ``command``, passing its output on line by line (known notices dropped, colour on a terminal)."""
    colour = sys.stdout.isatty() and "NO_COLOR" not in env
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            shown = shown_line(line, colour)
            if shown is not None:
                sys.stdout.write(shown)
                sys.stdout.flush()


def simulate(app_dir: Path, flwr_home: Path, supernodes: int, cpus: float, run_config: str) -> int:
    """Submit one run, stream its logs, stop the SuperLink; 0 only if the run completed."""
    env = flower_env(flwr_home)
    try:
        ensure_local_connection(flwr_home)
        restart_superlink(env)
    except LaunchError as refused:
        print(f"fedlayer: {refused}", file=sys.stderr)
        return 1
    try:
        stream(run_command(app_dir, supernodes, cpus, run_config), env)
        latest = latest_run_status(env)
    finally:
        stop_superlink(flwr_home)
    if latest is None:
        print("fedlayer: the run was never submitted (see flwr's error above)", file=sys.stderr)
        return 1
    run_id, status = latest
    if status != "finished:completed":
        print(f"fedlayer: run {run_id} ended as '{status}'", file=sys.stderr)
        return 1
    print(f"fedlayer: run {run_id} {status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedlayer simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--app", type=Path, default=Path.cwd(), help="app directory (with pyproject.toml)")
    parser.add_argument("--flwr-home", type=Path, default=None, help="default: FLWR_HOME, else ~/.flwr")
    parser.add_argument("--supernodes", type=int, default=4, help="simulated clients")
    parser.add_argument("--cpus", type=float, default=2, help="CPUs per client (Ray actor)")
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"method='fedavg' rounds=5\"")
    args = parser.parse_args(argv)
    app_dir = args.app.resolve()
    flwr_home = (args.flwr_home or default_flwr_home(dict(os.environ))).resolve()
    return simulate(app_dir, flwr_home, args.supernodes, args.cpus, args.run_config)
