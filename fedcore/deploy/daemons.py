"""The SuperLink and SuperNode command lines, validated, and ``exec`` so the PID started is the daemon's."""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex

from fedcore.core.devices import PROFILES  # light module (no torch): catches a typo before the run does
from fedcore.deploy.common import (
    CA_CERT,
    LOOPBACK,
    SERVER_CERT,
    SERVER_KEY,
    DeployError,
    flower_bin,
    is_ip,
    read_file,
)
from fedcore.deploy.tls import load_private_key, require_san, require_valid_chain


def _is_loopback(host: str) -> bool:
    return host == "localhost" or (is_ip(host) and ipaddress.ip_address(host).is_loopback)


def superlink_command(args: argparse.Namespace) -> list[str]:
    """TLS always comes with node authentication: otherwise any device reaching 9092 could join.

    The control API starts runs and reads their results: it stays on loopback unless explicitly opened.
    """
    if not _is_loopback(args.control_host) and not args.public_control:
        raise DeployError(
            f"--control-host {args.control_host} would expose the control API (start runs, read results) "
            "beyond this machine; keep 127.0.0.1 and tunnel, or pass --public-control to mean it"
        )
    command = [flower_bin("flower-superlink")]
    if args.insecure:
        command.append("--insecure")
    else:
        certs = args.certs.expanduser().resolve()
        for name in (CA_CERT, SERVER_CERT, SERVER_KEY):
            read_file(certs / name, "TLS file")
        require_san(certs / SERVER_CERT, [LOOPBACK, *args.advertise])
        require_valid_chain(certs)
        command += ["--ssl-ca-certfile", str(certs / CA_CERT), "--ssl-certfile", str(certs / SERVER_CERT)]
        command += ["--ssl-keyfile", str(certs / SERVER_KEY), "--enable-supernode-auth"]
    database = args.database.expanduser().resolve()
    command += [
        "--disable-runtime-dependency-installation",
        "--isolation", args.isolation,
        "--fleet-api-address", args.fleet_address,
        "--host", args.control_host,
        "--port", str(args.control_port),
        "--database", str(database),
    ]  # fmt: skip
    if args.log_file:
        command += ["--log-file", str(args.log_file.expanduser().resolve())]
    return command + _health(args)


def node_config(args: argparse.Namespace) -> str:
    """The --node-config string the ClientApp reads (fedcore.core.devices profile keys included)."""
    if args.device is not None and args.device not in PROFILES:
        raise DeployError(f"--device {args.device!r} is unknown; known: {', '.join(sorted(PROFILES))}")
    pairs = _data_pairs(args)
    if args.device is not None:
        pairs.append(f'device="{args.device}"')
    for key in ("speed", "memory_mb", "capacity", "max_blocks"):
        value = getattr(args, key)
        if value is not None:
            pairs.append(f"{key.replace('_', '-')}={value}")
    return " ".join(pairs)


def _data_pairs(args: argparse.Namespace) -> list[str]:
    """The node's own file (runs with data.name='node'), or its partition of a shared dataset."""
    partition = (args.partition_id, args.num_partitions)
    if args.data_path is not None:
        if partition != (None, None):
            raise DeployError(
                "--data-path names this node's own data: give no --partition-id/--num-partitions"
            )
        path = args.data_path.expanduser().resolve()
        if not path.exists():
            raise DeployError(
                f"--data-path {path} does not exist: name this node's data file or dataset folder"
            )
        return [f'data-path="{path}"']
    if None in partition:
        raise DeployError("give --partition-id and --num-partitions, or --data-path for this node's own data")
    if not 0 <= args.partition_id < args.num_partitions:
        raise DeployError(f"--partition-id {args.partition_id} is not in [0, {args.num_partitions})")
    return [f"partition-id={args.partition_id}", f"num-partitions={args.num_partitions}"]


def supernode_command(args: argparse.Namespace) -> list[str]:
    """The runtime API stays on 127.0.0.1: only this device's own ClientApp processes use it."""
    command = [flower_bin("flower-supernode"), "--superlink", args.superlink]
    if args.insecure:
        command.append("--insecure")
    else:
        read_file(args.root_certificates, "CA certificate")
        if args.key is None:
            raise DeployError(
                "a TLS SuperNode needs --key (its registered private key from `keys`): a SuperLink started "
                "with --certs authenticates every node"
            )
        load_private_key(args.key)
        command += ["--root-certificates", str(args.root_certificates.expanduser().resolve())]
        command += ["--auth-supernode-private-key", str(args.key.expanduser().resolve())]
    command += ["--isolation", args.isolation, "--host", "127.0.0.1", "--port", str(args.port)]
    command += ["--node-config", node_config(args)]
    if args.max_wait_time is not None:
        command += ["--max-wait-time", str(args.max_wait_time)]
    return command + _health(args)


def _health(args: argparse.Namespace) -> list[str]:
    """Flower's gRPC health service (grpc.health.v1, no TLS), on loopback: for this machine's checks."""
    if args.health_port is None:
        return []
    return ["--health-server-address", f"{LOOPBACK}:{args.health_port}"]


def daemon_environment(args: argparse.Namespace) -> dict[str, str]:
    """Variables the daemon (and the ClientApps it starts) need beyond the caller's environment.

    ``--assets DIR`` points the node's asset cache at a folder filled by ``fedlayer assets fetch --to DIR``
    (for a device without access to a package registry).
    """
    env = {"FLWR_DISABLE_UPDATE_CHECK": "1"}  # edge devices are often offline
    assets = getattr(args, "assets", None)
    if assets is not None:
        folder = assets.expanduser().resolve()
        if not folder.is_dir():
            raise DeployError(
                f"--assets {assets}: no such folder; fill one with `fedlayer assets fetch --to DIR` and "
                "copy it to this device"
            )
        env["FEDLAYER_CACHE"] = str(folder)
    return env


def start(command: list[str], env: dict[str, str], dry_run: bool) -> int:
    """Print the command, then become the daemon (exec), so its PID is this process's PID."""
    print(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(command)]), flush=True)
    if dry_run:
        return 0
    os.environ.update(env)
    os.execv(command[0], command)
    return 1  # not reached
