"""The node's tools on the device's own Python: version, key pairs, carried assets, health, units.

Written for Python 3.10 (JetPack 6): imports only the standard library, pytest and the tools' modules.
Set FEDLAYER_EXPECT_PYTHON=3.10 to fail when run on another interpreter by mistake.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
import stat
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from fedcore.data import assets

ROOT = Path(__file__).resolve().parents[2]


def fedlayer(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``fedlayer ARGS`` from this checkout on this interpreter (no install needed)."""
    return subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def test_runs_on_the_expected_interpreter() -> None:
    expected = os.environ.get("FEDLAYER_EXPECT_PYTHON")
    if expected:
        assert f"{sys.version_info.major}.{sys.version_info.minor}" == expected


def test_version_reports_this_checkout_and_interpreter() -> None:
    out = fedlayer("--version").stdout.strip()
    python = ".".join(map(str, sys.version_info[:3]))
    assert re.fullmatch(rf"fedlayer \d+\.\d+\.\d+ \(flwr (1\.39\.0|not installed), Python {python}\)", out)


def test_node_key_pair_is_private_and_readable_by_the_supernode(tmp_path: Path) -> None:
    out = fedlayer("deploy", "keys", "--out", str(tmp_path), "--count", "1", "--prefix", "jetson-07").stdout
    assert out.strip() == str(tmp_path / "jetson-07-1.pub")
    private = tmp_path / "jetson-07-1"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (tmp_path / "jetson-07-1.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_superexec_secret_is_private_random_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "superexec.secret"
    assert fedlayer("deploy", "secret", "--out", str(path)).stdout.strip() == str(path)
    first = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", first)  # no newline: Flower reads the file as exact bytes
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fedlayer("deploy", "secret", "--out", str(path))
    assert path.read_text() == first  # the SuperNode and SuperExec already read it
    other = tmp_path / "other.secret"
    fedlayer("deploy", "secret", "--out", str(other))
    assert other.read_text() != first


def test_supernode_unit_or_a_clear_line_where_flower_is_not_installed(tmp_path: Path) -> None:
    node = ["deploy", "systemd", "supernode", "--superlink", "fl.example.org:9092", "--insecure"]
    node += ["--partition-id", "0", "--num-partitions", "2", "--out", str(tmp_path)]
    result = fedlayer(*node, check=False)
    if importlib.util.find_spec("flwr") is None:
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "fedlayer deploy: error: `flower-supernode` not found: activate the environment where "
            "flwr==1.39.0 is installed"
        )
    else:
        assert result.returncode == 0, result.stderr
        assert "Restart=on-failure" in (tmp_path / "fedlayer-supernode.service").read_text()


def test_health_check_speaks_the_standard_grpc_health_service(tmp_path: Path) -> None:
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert fedlayer("deploy", "health", f"127.0.0.1:{port}").stdout.strip() == "SERVING"
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        result = fedlayer("deploy", "health", f"127.0.0.1:{port}", check=False)
        assert result.returncode == 1 and "answers NOT_SERVING" in result.stderr
    finally:
        server.stop(None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    result = fedlayer("deploy", "health", f"127.0.0.1:{closed}", "--timeout", "1", check=False)
    assert result.returncode == 1 and "no health answer" in result.stderr


def test_assets_fetched_to_a_folder_serve_a_device_without_registry_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDLAYER_CACHE", str(tmp_path / "this-machines-cache"))
    carry = tmp_path / "carry"
    assert assets.main(["fetch", "proxy-text", "--to", str(carry)]) == 0
    out = capsys.readouterr().out
    assert f"proxy-text: {carry / assets.ASSETS['proxy-text'].path}" in out
    assert "--assets COPY" in out
    assert not (tmp_path / "this-machines-cache").exists()

    device_copy = tmp_path / "device" / "fedlayer-assets"
    device_copy.parent.mkdir()
    carry.rename(device_copy)  # copied to the device, under another path

    def no_registry(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the device tried to download: {args[0]}")

    monkeypatch.setattr(subprocess, "run", no_registry)
    monkeypatch.setenv("FEDLAYER_CACHE", str(device_copy))
    path = assets.asset_path("proxy-text")
    assert str(path).startswith(str(device_copy))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == assets.ASSETS["proxy-text"].sha256
