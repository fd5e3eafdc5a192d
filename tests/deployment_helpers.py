"""Real Flower daemons on loopback for tests/test_deployment.py: ports, logs, waiting, runs, clean-up.

Every daemon starts in its own session and is stopped by PID together with everything it spawned
(SuperExecs, ServerApp/ClientApp processes), also those re-parented to init after a SIGKILL or started in
the background by a shell that has exited, which are found by their session or by the test's own ports on
their command lines. Runs are judged by `flwr ls`, never by the exit
code of `flwr run`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_TOOL = [sys.executable, "-m", "fedcore.cli.main", "deploy"]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port nobody listens on now: parallel test runs pick different ones."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    """Poll until check() is truthy; the error says what never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(poll_s)


class Daemons:
    """Processes started by one test, with their logs; stop() leaves none of them behind."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: set[int] = set()
        log_dir.mkdir(parents=True, exist_ok=True)

    def port(self) -> int:
        port = free_port()
        self.ports.add(port)
        return port

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=env or self.env,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def logs_tail(self, lines: int = 15) -> str:
        """The end of every log, for assertion messages."""
        parts = []
        for name in self.procs:
            tail = self.log(name).splitlines()[-lines:]
            parts.append(f"--- {name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_log(self, name: str, pattern: str, timeout_s: float) -> re.Match[str]:
        proc = self.procs[name]

        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.log(name))
            if match is None and proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({proc.returncode}) before logging {pattern!r}:\n{self.log(name)}"
                )
            return match

        return wait_for(found, timeout_s, f"{name} logging {pattern!r}")

    def _ours(self) -> list[psutil.Process]:
        """Started processes, their descendants, and orphans still in a started process's session or whose
        command line names one of our ports."""
        found: dict[int, psutil.Process] = {}
        sessions = {proc.pid for proc in self.procs.values()}
        for proc in self.procs.values():
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p
            except psutil.NoSuchProcess:
                continue
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.pid != os.getpid() and (any(a in cmdline for a in addresses) or _session(p.pid) in sessions):
                found[p.pid] = p
        return list(found.values())

    def stop(self, grace_s: float = 5.0) -> None:
        victims = self._ours()
        for p in victims:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(victims, timeout=grace_s)
        for p in alive + self._ours():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                continue
        for proc in self.procs.values():
            proc.wait(timeout=10)  # reaps our direct children


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def flwr(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def flwr_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    """A `flwr ... --format json` answer (anything printed before the JSON object is skipped)."""
    out = flwr(env, *args, "--format", "json")
    start = out.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"flwr {' '.join(args)} printed no JSON: {out.stdout}{out.stderr}")
    return json.loads(out.stdout[start:])


def nodes_online(env: dict[str, str], connection: str) -> int:
    try:
        nodes = flwr_json(env, "supernode", "ls", connection).get("nodes", [])
    except (RuntimeError, json.JSONDecodeError):
        return 0
    return sum(n["status"] == "online" for n in nodes)


def run_app(
    env: dict[str, str],
    connection: str,
    run_config: str,
    output_dir: Path,
    timeout_s: float,
    app_dir: Path = REPO_ROOT,
) -> tuple[int, str]:
    """Submit the app (this one unless ``app_dir``) and wait for the run to finish; returns (run id, final
    status from `flwr ls`)."""
    submitted = flwr_json(env, "run", str(app_dir), connection, "--run-config", run_config)
    if not submitted.get("success"):
        raise RuntimeError(f"flwr run failed: {submitted}")
    run_id = int(submitted["run-id"])
    return run_id, wait_run(env, connection, run_id, output_dir, timeout_s)


def wait_run(env: dict[str, str], connection: str, run_id: int, output_dir: Path, timeout_s: float) -> str:
    """Wait for a submitted run to finish (stopping it after timeout_s); returns its final status.

    Each `flwr` call costs about a second of CPU that the ClientApps need on a 2-core box, so the status
    is read every 10 s, or at once when the run's summary.json appears in output_dir.
    """
    last_read = time.monotonic()

    def finished() -> str | None:
        nonlocal last_read
        if not any(output_dir.glob("*/summary.json")) and time.monotonic() - last_read < 10:
            return None
        last_read = time.monotonic()
        listed = flwr_json(env, "ls", connection, "--run-id", str(run_id))
        if not listed.get("success"):  # e.g. the SuperLink is gone: stop polling at once
            raise RuntimeError(f"flwr ls failed: {listed}")
        status = str(listed["runs"][0]["status"])
        return status if status.startswith("finished") else None

    try:
        return str(wait_for(finished, timeout_s, f"run {run_id} finishing", poll_s=1.0))
    except TimeoutError:
        flwr(env, "stop", str(run_id), connection)
        raise


def run_config_string(values: dict[str, object]) -> str:
    """`--run-config` syntax: TOML values (strings quoted, booleans lower-case)."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str | bool) else v}" for k, v in values.items())


def metrics_rows(output_dir: Path) -> list[dict[str, Any]]:
    """The rows of the single run directory under output_dir."""
    (metrics,) = output_dir.glob("*/metrics.jsonl")
    return [json.loads(line) for line in metrics.read_text().splitlines()]
