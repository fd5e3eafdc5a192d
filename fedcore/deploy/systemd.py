"""systemd units for the SuperLink and a SuperNode: they start at boot, once the network is up, and restart
after a crash, so a rebooted device rejoins the federation on its own.

The unit runs the Flower daemon directly with the command ``fedlayer deploy superlink|supernode`` would
exec (checked now, absolute paths). Its working directory is the state directory: the SuperLink's
database and run outputs (a relative ``output.dir``) live there, and a node keeps its personal layers
there (``$XDG_DATA_HOME/fedlayer/personal-layers``), so they survive a restart.
"""

from __future__ import annotations

import re
from pathlib import Path

from fedcore.deploy.common import DeployError

#: restart a crashed daemon after this long; a node whose key is not yet registered retries at this pace
RESTART_SEC = 10


def _quote(word: str) -> str:
    """One ExecStart word as systemd splits it: double-quoted with C escapes when needed, % and $ doubled."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _env_line(name: str, value: str) -> str:
    if "\n" in value:
        raise DeployError(f"environment variable {name} holds a line break; systemd units cannot carry it")
    return "Environment=" + _quote(f"{name}={value}")


def render_unit(
    role: str,
    command: list[str],
    env: dict[str, str],
    state_dir: Path,
    user: str | None,
) -> str:
    """The unit file for ``role`` ("superlink" or "supernode") running ``command``."""
    after = "network-online.target" + (" time-sync.target" if role == "supernode" else "")
    env = dict(env)
    env.setdefault("FEDLAYER_CACHE", str(state_dir / "cache"))
    if role == "supernode":
        env["XDG_DATA_HOME"] = str(state_dir)  # personal layers: STATE/fedlayer/personal-layers
    lines = [
        "[Unit]",
        f"Description=fedlayer {'SuperLink' if role == 'superlink' else 'SuperNode'} (Flower 1.39)",
        f"After={after}",
        "Wants=network-online.target",
        # the restart limit never gives up on a node that waits for its key to be registered
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=exec",
    ]
    if user:
        lines += [f"User={user}", f"Group={user}"]
    lines += [
        f"WorkingDirectory={_quote(str(state_dir))}",
        *(_env_line(name, value) for name, value in sorted(env.items())),
        "ExecStart=" + " ".join(_quote(word) for word in command),
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        # the daemon and the ClientApp processes it started stop together
        "KillMode=control-group",
        "TimeoutStopSec=30",
        f"SyslogIdentifier=fedlayer-{role}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def write_unit(out: Path, role: str, text: str) -> Path:
    """Write ``fedlayer-ROLE.service`` into ``out`` (e.g. /etc/systemd/system)."""
    out = out.expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"fedlayer-{role}.service"
        path.write_text(text)
    except OSError as exc:
        raise DeployError(
            f"--out {out}: cannot write the unit ({exc.strerror or exc}); run as root?"
        ) from None
    return path
