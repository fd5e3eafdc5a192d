"""The shared secret a SuperNode (or SuperLink) and its SuperExec authenticate runtime API calls with.

With process isolation the SuperExec runs in another container and reaches the runtime API over a
network; Flower 1.39 then signs the SuperExec's requests with this secret (its
``--superexec-auth-secret-file``, marked experimental by Flower), so nothing else on that network can
claim the node's runs.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fedcore.deploy.common import chown, write_private


def make_secret(path: Path, owner: int | None) -> Path:
    """64 hex characters (256 random bits), no newline, 0600; an existing secret is kept (both sides
    already read it)."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or not path.read_bytes():
        write_private(path, secrets.token_hex(32).encode())
    path.chmod(0o600)
    chown([path], owner)
    return path
