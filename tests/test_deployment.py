"""Deployment end to end: real SuperLink, SuperNodes and SuperExecs on 127.0.0.1, the app run with `flwr run`.

What simulation cannot show is tested here: the edge link is gRPC, TLS and node authentication keep an
unregistered device out, the docker-compose commands are valid 1.39 command lines that really federate,
a device dying mid-round costs the run one reply, not the run, and a node run and restarted as its
systemd unit says rejoins the run.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

from fedcore.config import RunConfig
from fedcore.deploy.systemd import RESTART_SEC
from tests.conftest import make_tiny_model_dir, tiny_run_config
from tests.deployment_helpers import (
    BIN,
    DEPLOY_TOOL,
    REPO_ROOT,
    Daemons,
    metrics_rows,
    nodes_online,
    run_app,
    run_config_string,
    wait_for,
)

COMPOSE = REPO_ROOT / "docker-compose.yml"
RUN_TIMEOUT_S = 240
#: a killed node's session stays online for HEARTBEAT_PATIENCE heartbeat intervals; restarts before then
#: are refused, one every RestartSec, and the one after it joins
MAX_RESTARTS = 1 + math.ceil(HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL / RESTART_SEC)


def tool(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEPLOY_TOOL, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,  # `python -m` imports this checkout's fedcore
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("deploy-model") / "bert", "bert")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA + server certificate (SAN: superlink, 127.0.0.1), two SuperNode key pairs and the SuperExec
    secret, from our tool."""
    root = tmp_path_factory.mktemp("pki")
    ok(tool("certs", "--out", root / "certs", "--host", "superlink"))
    ok(tool("keys", "--out", root / "keys", "--count", "2"))
    ok(tool("secret", "--out", root / "keys" / "superexec.secret"))
    return root


def tiny_run(model: Path, output_dir: Path, **overrides: object) -> str:
    """tests/conftest.py's CI-sized run as a --run-config string: only what differs from the app defaults."""
    defaults = RunConfig.from_flat({}).to_flat()
    flat = tiny_run_config(model, output_dir, **{"round.timeout": 120.0, **overrides}).to_flat()
    return run_config_string({k: v for k, v in flat.items() if defaults.get(k) != v})


def public_keys(pki: Path) -> list[Path]:
    return sorted((pki / "keys").glob("supernode-*.pub"))


def client_rows(rows: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    return {(r["round"], r["partition_id"]): r["status"] for r in rows if r["kind"] == "client"}


def start_superlink(daemons: Daemons, *tls: str | Path) -> tuple[int, int]:
    """Our tool's SuperLink on free loopback ports; returns (fleet port, control port) once both serve."""
    fleet, control = daemons.port(), daemons.port()
    argv = [*DEPLOY_TOOL, "superlink", *map(str, tls), "--fleet-address", f"127.0.0.1:{fleet}"]
    argv += ["--control-port", str(control), "--database", str(daemons.log_dir.parent / "superlink.db")]
    daemons.start("superlink", argv)
    daemons.wait_log("superlink", rf"Starting Fleet API \(gRPC-rere\) on 127\.0\.0\.1:{fleet}", 60)
    daemons.wait_log("superlink", rf"Uvicorn running on https?://127\.0\.0\.1:{control}", 60)
    return fleet, control


def start_supernode(
    daemons: Daemons, name: str, fleet: int, partition: int, *tls: str | Path, partitions: int = 2
) -> None:
    argv = [*DEPLOY_TOOL, "supernode", "--superlink", f"127.0.0.1:{fleet}", *map(str, tls)]
    argv += ["--partition-id", str(partition), "--num-partitions", str(partitions)]
    argv += ["--port", str(daemons.port())]
    daemons.start(name, argv)


def connect(daemons: Daemons, name: str, control: int, *tls: str | Path) -> None:
    home = daemons.env["FLWR_HOME"]
    ok(tool("connection", name, "--address", f"127.0.0.1:{control}", *tls, "--flwr-home", home))


def wait_nodes(daemons: Daemons, connection: str, count: int) -> None:
    try:
        wait_for(lambda: nodes_online(daemons.env, connection) >= count, 90, f"{count} nodes online", 2.0)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{daemons.logs_tail()}") from None


# -------------------------------------------------------------------------------------------- tooling


def one_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedlayer deploy: error:"), result.stderr
    assert expected in lines[0]


def test_tool_fails_with_one_clear_line_on_bad_input(pki: Path, tmp_path: Path) -> None:
    no_openssl = {"PATH": str(tmp_path)}  # an empty directory: no openssl to find
    one_error_line(tool("certs", "--out", tmp_path / "c", "--host", "x", env=no_openssl), "openssl not found")
    assert not (tmp_path / "c").exists()

    one_error_line(tool("register", "local", tmp_path / "missing.pub"), "cannot read public key")
    (tmp_path / "junk.pub").write_text("not a key\n")
    one_error_line(tool("register", "local", tmp_path / "junk.pub"), "is not an OpenSSH public key")
    node = ["supernode", "--superlink", "127.0.0.1:1", "--partition-id", "0", "--num-partitions", "2"]
    node += ["--root-certificates", pki / "certs" / "ca.crt", "--dry-run"]
    one_error_line(tool(*node, "--key", tmp_path / "junk.pub"), "is not an unencrypted OpenSSH private key")

    # an existing certificate is never silently reused for a host it does not cover
    one_error_line(
        tool("certs", "--out", pki / "certs", "--host", "edge.example"), "does not cover edge.example"
    )
    one_error_line(
        tool("superlink", "--certs", pki / "certs", "--advertise", "10.9.8.7", "--dry-run"),
        "does not cover 10.9.8.7",
    )
    ok(tool("superlink", "--certs", pki / "certs", "--advertise", "superlink", "--dry-run"))


def copied_certs(pki: Path, into: Path) -> Path:
    shutil.copytree(pki / "certs", into)
    return into


def expired_server_certificate(certs: Path) -> None:
    """Replace server.pem by one the same CA issued for the same key, valid until yesterday."""
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    current = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(ca.subject)
        .public_key(current.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now - timedelta(days=1))
        .add_extension(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, False)
    )
    expired = builder.sign(ca_key, hashes.SHA384())  # type: ignore[arg-type]
    (certs / "server.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))


def test_superlink_refuses_certificates_the_nodes_would_reject(pki: Path, tmp_path: Path) -> None:
    expired = copied_certs(pki, tmp_path / "expired")
    expired_server_certificate(expired)
    one_error_line(tool("superlink", "--certs", expired, "--dry-run"), "server.pem is valid only from")

    foreign = copied_certs(pki, tmp_path / "foreign")
    ok(tool("certs", "--out", tmp_path / "other-ca", "--host", "superlink"))
    for name in ("server.pem", "server.key"):
        shutil.copy(tmp_path / "other-ca" / name, foreign / name)
    one_error_line(tool("superlink", "--certs", foreign, "--dry-run"), "server.pem was not issued by")

    mismatched = copied_certs(pki, tmp_path / "mismatched")
    shutil.copy(tmp_path / "other-ca" / "server.key", mismatched / "server.key")
    one_error_line(tool("superlink", "--certs", mismatched, "--dry-run"), "server.key is not the key of")


def test_tool_refuses_what_would_open_or_weaken_the_federation(pki: Path, tmp_path: Path) -> None:
    public = ("superlink", "--insecure", "--control-host", "0.0.0.0", "--dry-run")
    one_error_line(tool(*public), "pass --public-control")
    assert "--host 0.0.0.0" in ok(tool(*public, "--public-control"))

    node = ["supernode", "--superlink", "127.0.0.1:1", "--partition-id", "0", "--num-partitions", "2"]
    one_error_line(tool(*node, "--root-certificates", pki / "certs" / "ca.crt", "--dry-run"), "needs --key")

    one_error_line(tool("certs", "--out", tmp_path / "c", "--host", "x", "--days", "0"), "at least 1 day")
    assert not (tmp_path / "c").exists()

    ok(tool("keys", "--out", tmp_path / "keys", "--count", "1"))
    private = tmp_path / "keys" / "supernode-1"
    private.chmod(0o644)
    ok(tool("keys", "--out", tmp_path / "keys", "--count", "1"))
    assert private.stat().st_mode & 0o777 == 0o600


def test_tool_writes_a_connection_next_to_existing_ones(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    ok(tool("connection", "edge", "--address", "10.0.0.1:9093", "--insecure", "--flwr-home", tmp_path))
    config = (tmp_path / "config.toml").read_text()
    assert 'address = ":local:"' in config and 'default = "local"' in config
    assert '[superlink.edge]\naddress = "10.0.0.1:9093"\ninsecure = true' in config


# ------------------------------------------------------------------------------------- docker-compose


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def help_flags(binary: str) -> set[str]:
    """The long options a Flower 1.39 binary accepts, from its --help."""
    out = subprocess.run(
        [str(BIN / binary), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


def test_compose_file_is_consistent_and_every_flag_exists_in_flower_1_39() -> None:
    spec = compose()
    services = spec["services"]
    entry = {name: s["entrypoint"][0] for name, s in services.items()}
    supernodes = sorted(n for n, e in entry.items() if e == "flower-supernode")
    superexecs = [n for n, e in entry.items() if e == "flower-superexec"]
    assert [n for n, e in entry.items() if e == "flower-superlink"] == ["superlink"]
    assert len(supernodes) == 2 and len(superexecs) == 1 + len(supernodes)

    flags = {b: help_flags(b) for b in ("flower-superlink", "flower-supernode", "flower-superexec")}
    for name, service in services.items():
        for arg in service.get("command", []):
            if entry[name] in flags and arg.startswith("--"):
                assert arg.split("=")[0] in flags[entry[name]], f"{name}: {arg} is not a 1.39 flag"
        for secret in service.get("secrets", []):
            assert secret in spec["secrets"], f"{name}: undeclared secret {secret}"
        image = service.get("image", "")
        assert image.startswith("fedlayer-") or image.endswith(":1.39.0"), f"{name}: unpinned image {image}"

    link = services["superlink"]
    assert set(link["ports"]) == {"9092:9092", "127.0.0.1:9093:9093"}  # gRPC public, control private
    assert {
        "--enable-supernode-auth",
        "--isolation=process",
        "--disable-runtime-dependency-installation",
    } <= set(link["command"])
    runtime_targets = sorted(
        a.split("=")[1] for n in superexecs for a in services[n]["command"] if a.startswith("--runtime-api")
    )
    assert runtime_targets == sorted(["superlink:9093", *(f"{n}:9094" for n in supernodes)])
    # every runtime API on the compose network authenticates its SuperExec
    for name in ["superlink", *supernodes, *superexecs]:
        assert "--superexec-auth-secret-file=/run/secrets/superexec.secret" in services[name]["command"], name
    configs = [a for n in supernodes for a in services[n]["command"] if a.startswith("--node-config=")]
    assert [re.search(r"partition-id=(\d+)", c)[1] for c in configs] == ["0", "1"]
    assert all("num-partitions=2" in c for c in configs)

    for dockerfile in ("cpu", "cuda", "jetson"):
        text = (REPO_ROOT / "deploy" / "docker" / f"{dockerfile}.Dockerfile").read_text()
        assert 'ENTRYPOINT ["flower-superexec"]' in text and "install-app.sh" in text
    assert "ARG TORCH_VERSION=2.13.0" in (REPO_ROOT / "deploy" / "docker" / "cpu.Dockerfile").read_text()
    assert '"flwr==1.39.0"' in (REPO_ROOT / "deploy" / "docker" / "install-app.sh").read_text()


class LocalCompose:
    """The compose services as local processes: service names -> 127.0.0.1, container ports -> free
    ports, mounted paths -> temporary directories. Everything else stays as written in the file."""

    def __init__(self, daemons: Daemons, pki: Path, cache: Path) -> None:
        self.spec = compose()
        self.daemons = daemons
        self.ports: dict[tuple[str, int], int] = {}
        self.paths = {"/app/cache": cache}
        self.secrets = {
            name: pki / Path(s["file"]).relative_to("deploy") for name, s in self.spec["secrets"].items()
        }

    def _port(self, service: str, port: int) -> int:
        return self.ports.setdefault((service, port), self.daemons.port())

    def _path(self, target: str) -> Path:
        return self.paths.setdefault(
            target, self.daemons.log_dir.parent / target.strip("/").replace("/", "-")
        )

    def _arg(self, service: str, arg: str) -> str:
        services = self.spec["services"]

        def address(match: re.Match[str]) -> str:
            """HOST:PORT of a service (or this service's 0.0.0.0) -> its local port on loopback."""
            host = service if match[1] == "0.0.0.0" else match[1]
            return f"127.0.0.1:{self._port(host, int(match[2]))}" if host in services else match[0]

        arg = re.sub(r"\b(0\.0\.0\.0|[a-z][a-z0-9-]*):(\d+)\b", address, arg)
        arg = re.sub(r"^--port=(\d+)$", lambda m: f"--port={self._port(service, int(m[1]))}", arg)
        arg = arg.replace("--host=0.0.0.0", "--host=127.0.0.1")
        arg = re.sub(r"/run/secrets/([\w.-]+)", lambda m: str(self.secrets[m[1]]), arg)
        # a SuperNode's node config names paths that its SuperExec's volumes hold: any service's mount
        for spec in self.spec["services"].values():
            for volume in spec.get("volumes", []):
                target = volume.split(":")[1]
                arg = arg.replace(target, str(self._path(target)))
        return arg

    def start(self, service: str) -> subprocess.Popen[bytes]:
        spec = self.spec["services"][service]
        entrypoint = spec["entrypoint"]
        binary = sys.executable if entrypoint[0] == "python" else str(BIN / entrypoint[0])
        argv = [binary, *(self._arg(service, a) for a in [*entrypoint[1:], *spec.get("command", [])])]
        env = dict(self.daemons.env)
        env.update({k: self._arg(service, str(v)) for k, v in spec.get("environment", {}).items()})
        for volume in spec.get("volumes", []):
            self._path(volume.split(":")[1]).mkdir(parents=True, exist_ok=True)
        return self.daemons.start(service, argv, env)


def test_compose_services_federate_as_local_processes_with_tls_and_node_auth(
    daemons: Daemons, pki: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Every compose command line, run locally: 2 registered nodes federate, a stranger is refused."""
    from fedcore.data.assets import cache_root

    local = LocalCompose(daemons, pki, cache_root())
    local.start("superlink")
    fleet, control = local.ports[("superlink", 9092)], local.ports[("superlink", 9093)]
    daemons.wait_log("superlink", rf"Uvicorn running on https://127\.0\.0\.1:{control}", 60)
    assert local.start("assets").wait(timeout=120) == 0, daemons.log("assets")
    connect(daemons, "compose", control, "--root-certificates", pki / "certs" / "ca.crt")
    ok(tool("register", "compose", *public_keys(pki), "--flwr-home", daemons.env["FLWR_HOME"]))
    for service in local.spec["services"]:
        if service not in ("superlink", "assets"):
            local.start(service)
    wait_nodes(daemons, "compose", 2)

    ok(tool("keys", "--out", tmp_path / "stranger", "--count", "1"))
    stranger_key = tmp_path / "stranger" / "supernode-1"
    start_supernode(
        daemons, "stranger", fleet, 0, "--root-certificates", pki / "certs" / "ca.crt", "--key", stranger_key
    )
    assert daemons.procs["stranger"].wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in daemons.log("stranger")

    out = tmp_path / "outputs"
    _, status = run_app(daemons.env, "compose", tiny_run(tiny_model, out, rounds=1), out, RUN_TIMEOUT_S)
    assert status == "finished:completed", daemons.logs_tail()
    assert client_rows(metrics_rows(out)) == {(1, 0): "ok", (1, 1): "ok"}
    assert nodes_online(daemons.env, "compose") == 2


# -------------------------------------------------------------------------------- insecure + gRPC link


def http_reply(port: int) -> bytes:
    """What a port answers to a plain HTTP/1.1 request (b"" if it just closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        try:
            return sock.recv(64)
        except (TimeoutError, ConnectionResetError):
            return b""


def test_insecure_deployment_runs_the_app_over_grpc(
    daemons: Daemons, tiny_model: Path, tmp_path: Path
) -> None:
    fleet, control = start_superlink(daemons, "--insecure")
    for partition in (0, 1):
        start_supernode(daemons, f"node-{partition}", fleet, partition, "--insecure")
    connect(daemons, "local-deploy", control, "--insecure")
    wait_nodes(daemons, "local-deploy", 2)

    # the edge link is gRPC: an established TCP connection to the Fleet port, which does not speak HTTP/1.1
    for partition in (0, 1):
        connections = psutil.Process(daemons.procs[f"node-{partition}"].pid).net_connections("tcp")
        assert any(c.raddr and c.raddr.port == fleet and c.status == "ESTABLISHED" for c in connections)
    assert not http_reply(fleet).startswith(b"HTTP/")
    assert http_reply(control).startswith(b"HTTP/1.1")  # the control port is the HTTP one

    out = tmp_path / "outputs"
    _, status = run_app(daemons.env, "local-deploy", tiny_run(tiny_model, out, rounds=1), out, RUN_TIMEOUT_S)
    assert status == "finished:completed", daemons.logs_tail()
    rows = metrics_rows(out)
    assert client_rows(rows) == {(1, 0): "ok", (1, 1): "ok"}
    assert all(r["bytes_up"] > 0 for r in rows if r["kind"] == "client")


# ---------------------------------------------------------------------------------- a node dies mid-round


def clientapp_running(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a live flwr-clientapp process runs under this SuperNode (exited ones are skipped)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "flwr-clientapp" in " ".join(child.cmdline()):
                return True
        except psutil.Error:  # it exited while we looked
            continue
    return False


def test_supernode_killed_mid_round_costs_one_reply_not_the_run(
    daemons: Daemons, pki: Path, tiny_model: Path, tmp_path: Path
) -> None:
    fleet, control = start_superlink(daemons, "--certs", pki / "certs")
    connect(daemons, "tls", control, "--root-certificates", pki / "certs" / "ca.crt")
    ok(tool("register", "tls", *public_keys(pki), "--flwr-home", daemons.env["FLWR_HOME"]))
    for partition in (0, 1):
        key = pki / "keys" / f"supernode-{partition + 1}"
        tls = ("--root-certificates", pki / "certs" / "ca.crt", "--key", key)
        start_supernode(daemons, f"node-{partition}", fleet, partition, *tls)
    wait_nodes(daemons, "tls", 2)

    out = tmp_path / "outputs"
    config = tiny_run(tiny_model, out, **{"clients.min": 1, "round.timeout": 60.0})
    victim = daemons.procs["node-1"]
    pool = ThreadPoolExecutor(1)  # the run goes on in the background while the victim is killed
    try:
        run = pool.submit(run_app, daemons.env, "tls", config, out, RUN_TIMEOUT_S + 120)
        daemons.wait_log("node-1", r"Receiving: train message", 180)
        wait_for(lambda: clientapp_running(victim), 60, "round 1's ClientApp on the victim")
        victim.send_signal(signal.SIGKILL)
        _, status = run.result(timeout=RUN_TIMEOUT_S + 150)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on failure: the daemons' teardown ends the polling
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert status == "finished:completed", daemons.logs_tail()
    rows = metrics_rows(out)
    statuses = client_rows(rows)
    assert statuses[(1, 0)] == "ok" and statuses[(1, 1)] in ("timeout", "failed")
    assert statuses[(2, 0)] == "ok"
    rounds = {r["round"]: r for r in rows if r["kind"] == "global"}
    assert rounds[1]["aggregated"] and rounds[1]["clients_ok"] == 1
    assert rounds[2]["aggregated"] and rounds[2]["clients_ok"] == 1


def unit_service(path: Path) -> tuple[list[str], dict[str, str], str]:
    """(ExecStart words, Environment, Restart) of a unit from `fedlayer deploy systemd`, as systemd reads
    them."""
    entries = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line]
    env = dict(shlex.split(value)[0].split("=", 1) for key, value in entries if key == "Environment")
    (command,) = [shlex.split(value) for key, value in entries if key == "ExecStart"]
    (restart,) = [value for key, value in entries if key == "Restart"]
    return command, env, restart


def kill_mid_round_and_restart(
    daemons: Daemons, name: str, command: list[str], env: dict[str, str], run: Future[tuple[int, str]]
) -> None:
    """SIGKILL node ``name`` while its round-1 ClientApp runs, then, until ``run`` is done, start
    ``command`` again RestartSec after each exit, as systemd's Restart=on-failure does.

    Until the SuperLink marks the killed session offline (two missed heartbeats), it refuses the same
    key's activation, so the first restarts exit with Flower's code 305; any other exit fails here."""
    victim = daemons.procs[name]
    daemons.wait_log(name, r"Receiving: train message", 240)
    wait_for(lambda: clientapp_running(victim), 60, f"round 1's ClientApp on {name}")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    current, restarts = name, 0
    while not run.done():
        if daemons.procs[current].poll() not in (None, 0):
            if current != name:
                assert "Failed to activate SuperNode" in daemons.log(current), daemons.log(current)
            time.sleep(RESTART_SEC)
            restarts += 1
            current = f"{name}-restart-{restarts}"
            daemons.start(current, command, env)
        time.sleep(1)
    assert 1 <= restarts <= MAX_RESTARTS, daemons.logs_tail()


def test_node_restarted_by_its_service_unit_rejoins_the_run(
    daemons: Daemons, pki: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A node runs as its systemd unit says; killed mid-round, it is started again as Restart=on-failure
    would, rejoins with the same key and answers the later rounds; the run completes."""
    fleet, control = start_superlink(daemons, "--certs", pki / "certs")
    connect(daemons, "tls", control, "--root-certificates", pki / "certs" / "ca.crt")
    ok(tool("register", "tls", *public_keys(pki), "--flwr-home", daemons.env["FLWR_HOME"]))
    ca = ("--root-certificates", pki / "certs" / "ca.crt")
    start_supernode(daemons, "node-0", fleet, 0, *ca, "--key", pki / "keys" / "supernode-1")
    node = ["supernode", "--superlink", f"127.0.0.1:{fleet}", *ca, "--key", pki / "keys" / "supernode-2"]
    node += ["--partition-id", "1", "--num-partitions", "2", "--port", str(daemons.port())]
    state = tmp_path / "node-1-state"
    ok(tool("systemd", *node, "--out", tmp_path / "units", "--state-dir", state))
    command, env, restart = unit_service(tmp_path / "units" / "fedlayer-supernode.service")
    assert restart == "on-failure" and env["XDG_DATA_HOME"] == str(state)
    daemons.start("node-1", command, {**daemons.env, **env})
    wait_nodes(daemons, "tls", 2)

    out = tmp_path / "outputs"
    config = tiny_run(tiny_model, out, rounds=3, **{"clients.min": 1, "round.timeout": 60.0})
    pool = ThreadPoolExecutor(1)
    try:
        run = pool.submit(run_app, daemons.env, "tls", config, out, RUN_TIMEOUT_S + 240)
        kill_mid_round_and_restart(daemons, "node-1", command, {**daemons.env, **env}, run)
        _, status = run.result(timeout=1)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert status == "finished:completed", daemons.logs_tail()
    statuses = client_rows(metrics_rows(out))
    assert statuses[(1, 0)] == "ok" and statuses[(1, 1)] in ("timeout", "failed")
    assert statuses[(3, 1)] == "ok", statuses  # the restarted node answers again


# ------------------------------------------------------------------------- a node sends undecodable replies


def hostile_app_dir(root: Path) -> Path:
    """This app with tests/hostile_app.py as its ClientApp (a Flower app of its own, built into a FAB)."""
    app = root / "hostile-app"
    for package in ("fedcore", "server_app", "client_app"):
        shutil.copytree(REPO_ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "tests" / "hostile_app.py", app / "hostile_app.py")
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    pyproject = pyproject.replace('"client_app.app:app"', '"hostile_app:app"')
    pyproject = pyproject.replace("fab-include = [", 'fab-include = ["hostile_app.py", ')
    (app / "pyproject.toml").write_text(pyproject)
    return app


def test_undecodable_replies_cost_their_senders_not_the_run(
    daemons: Daemons, tiny_model: Path, tmp_path: Path
) -> None:
    """A tensor name listed twice makes Flower's decoding raise: in a train reply (partition 1) and in a
    start-up answer (partition 2). Each costs its sender; the run completes with the honest node."""
    fleet, control = start_superlink(daemons, "--insecure")
    for partition in (0, 1, 2):
        start_supernode(daemons, f"node-{partition}", fleet, partition, "--insecure", partitions=3)
    connect(daemons, "local-deploy", control, "--insecure")
    wait_nodes(daemons, "local-deploy", 3)

    out = tmp_path / "outputs"
    config = tiny_run(tiny_model, out, rounds=2, **{"clients.min": 1})
    app = hostile_app_dir(tmp_path)
    _, status = run_app(daemons.env, "local-deploy", config, out, RUN_TIMEOUT_S, app_dir=app)
    assert status == "finished:completed", daemons.logs_tail()
    rows = metrics_rows(out)
    assert client_rows(rows) == {(1, 0): "ok", (1, 1): "rejected", (2, 0): "ok", (2, 1): "rejected"}
    reasons = [r["reason"] for r in rows if r["kind"] == "client" and r["status"] == "rejected"]
    assert all(reason.startswith("undecodable reply (ValueError") for reason in reasons)
    (refused,) = [r for r in rows if r["kind"] == "node" and r["status"] != "ready"]
    assert refused["status"] == "refused" and "undecodable reply" in refused["reason"]
    assert [r["clients_ok"] for r in rows if r["kind"] == "global" and r["round"] > 0] == [1, 1]
