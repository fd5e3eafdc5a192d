"""Run the app as a local Ray simulation through ``flwr run``, the way users run Flower apps.

Wraps the traps of flwr 1.39: the managed local SuperLink is detached and outlives the run (we stop
it), it would install the app's dependencies into a fresh env on every run unless told not to, and
``flwr run --stream`` exits 0 even when the run failed (we read the run's status with ``flwr ls``).
A private FLWR_HOME keeps all of this away from the user's own Flower setup.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedcore import known_warnings

_CONNECTION = "local"
_CONFIG_TOML = f"""[superlink]
default = "{_CONNECTION}"

[superlink.{_CONNECTION}]
address = ":local:"
"""


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
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


def _superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of the managed SuperLink of this FLWR_HOME (its database path is on its command line)."""
    marker = str(flwr_home / "local-superlink")
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmdline and marker in cmdline:
            pids.append(int(proc.name))
    return pids


def stop_superlink(flwr_home: Path, grace_s: float = 10.0) -> None:
    pids = _superlink_pids(flwr_home)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _superlink_pids(flwr_home):
        time.sleep(0.2)
    for pid in _superlink_pids(flwr_home):
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


def simulate(app_dir: Path, flwr_home: Path, supernodes: int, cpus: float, run_config: str) -> int:
    """Submit one run, stream its logs, stop the SuperLink; 0 only if the run completed."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(_CONFIG_TOML)
    env = flower_env(flwr_home)
    stop_superlink(flwr_home)  # a stale one would keep old settings
    command = [
        "flwr",
        "run",
        str(app_dir),
        _CONNECTION,
        "--stream",
        "--federation-config",
        f"num-supernodes={supernodes} client-resources-num-cpus={cpus:g}",
    ]
    if run_config:
        command += ["--run-config", run_config]
    try:
        subprocess.run(command, env=env, check=False)
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
    parser.add_argument("--flwr-home", type=Path, default=None, help="default: <app>/.flwr")
    parser.add_argument("--supernodes", type=int, default=4, help="simulated clients")
    parser.add_argument("--cpus", type=float, default=2, help="CPUs per client (Ray actor)")
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"method='fedavg' rounds=5\"")
    args = parser.parse_args(argv)
    app_dir = args.app.resolve()
    flwr_home = (args.flwr_home or app_dir / ".flwr").resolve()
    return simulate(app_dir, flwr_home, args.supernodes, args.cpus, args.run_config)
