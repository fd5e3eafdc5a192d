"""What the operator tooling's parts share: its error, default ports and file names, file access."""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: the SuperLink's own SuperExec and the local flwr CLI connect over loopback: always in the SAN
LOOPBACK = "127.0.0.1"
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
FLEET_PORT, CONTROL_PORT, NODE_RUNTIME_PORT = 9092, 9093, 9094


class DeployError(RuntimeError):
    """Bad input or a failed step; main() prints the message as one line and exits 1."""


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise DeployError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def chown(paths: Sequence[Path], uid: int | None) -> None:
    """Hand files to the container user (uid 49999 in the flwr images); needs root."""
    if uid is None:
        return
    for path in paths:
        try:
            os.chown(path, uid, uid)
        except PermissionError:
            raise DeployError(
                f"cannot chown {path} to uid {uid}: run as root, or `sudo chown {uid}:{uid} {path}`"
            ) from None


def flower_bin(name: str) -> str:
    """A Flower executable from this interpreter's environment first (the pinned flwr), else PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise DeployError(f"`{name}` not found: activate the environment where flwr==1.39.0 is installed")
    return found


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def write_private(path: Path, data: bytes) -> None:
    """Create a 0600 file atomically, so a key is never readable by others, not even half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
