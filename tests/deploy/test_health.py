"""`fedlayer deploy health` asks Flower's gRPC health service, as a monitor or a container check would."""

from __future__ import annotations

import socket

import pytest
from flwr.supercore.grpc_health.health_server import run_health_server_grpc_no_tls

from fedcore.deploy.cli import main as deploy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_health_answers_serving_from_flowers_health_server(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    server = run_health_server_grpc_no_tls(f"127.0.0.1:{port}")  # what --health-port starts in a daemon
    try:
        assert deploy(["health", f"127.0.0.1:{port}"]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"
    finally:
        server.stop(None)


def test_health_fails_with_one_line_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy(["health", f"127.0.0.1:{_free_port()}", "--timeout", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedlayer deploy: error: no health answer from 127.0.0.1:")
