"""The operator's flwr CLI: SuperLink connections in $FLWR_HOME/config.toml and SuperNode key registration."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6): the same parser, installed with flwr
    import tomli as tomllib

from fedcore.deploy.common import DeployError, flower_bin, read_file
from fedcore.deploy.tls import load_public_key


def flwr_home(explicit: Path | None) -> Path:
    return (explicit or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")).expanduser()


def write_connection(
    home: Path, name: str, address: str, root_certificates: Path | None, make_default: bool
) -> Path:
    """Add or replace ``[superlink.NAME]`` in $FLWR_HOME/config.toml, keeping every other entry."""
    import tomli_w  # installed with flwr; imported here so the other subcommands do not need it

    path = home / "config.toml"
    try:
        config = tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"cannot read {path}: {exc}") from None
    superlinks = config.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        read_file(root_certificates, "CA certificate")
        entry["root-certificates"] = str(root_certificates.expanduser().resolve())
    superlinks[name] = entry
    if make_default or "default" not in superlinks:
        superlinks["default"] = name
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".config.toml.tmp")
    tmp.write_text(tomli_w.dumps(config))
    os.replace(tmp, path)
    return path


def register_keys(connection: str, keys: Sequence[Path], home: Path | None) -> dict[str, str]:
    """``flwr supernode register`` for each key; returns {key file: node id or "already registered"}."""
    for key in keys:
        load_public_key(key)  # all keys are checked before the first one is registered
    env = dict(os.environ, FLWR_DISABLE_UPDATE_CHECK="1", FLWR_HOME=str(flwr_home(home)))
    outcome = {}
    for key in keys:
        command = [flower_bin("flwr"), "supernode", "register", str(key), connection, "--format", "json"]
        command += ["--name", key.name.removesuffix(".pub")]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        try:
            reply = json.loads(result.stdout[result.stdout.find("{") :])
        except json.JSONDecodeError:
            reply = {}
        if result.returncode == 0 and reply.get("success"):
            outcome[str(key)] = f"node {reply['node-id']}"
            continue
        detail = " ".join(str(reply.get("error-message") or result.stderr or result.stdout).split())
        if "already in use" in detail:  # re-running after adding a node must not fail on the old ones
            outcome[str(key)] = "already registered"
            continue
        raise DeployError(f"registering {key} with '{connection}' failed: {detail}")
    return outcome
