"""Personal layers (PTLS) on the node's disk: a SuperNode restart or a resumed run keeps them.

Files live under ``<personal-dir>/<run name>/partition-<id>/round-<r>.safetensors``: the run name is
the identity the server keeps in its run directory (so a resume keeps it), the partition is the node's.
Each file is written atomically and carries a hash of its values (fedcore.core.tensor_files). Nothing
stays in memory between rounds.

A round r starts from the newest file of a round before r. Files of round r or later can only exist when
the server resumed from an earlier checkpoint and repeats those rounds, so they are deleted, which keeps a
resumed run bit-identical to an uninterrupted one; files older than the one used are never needed again
(the server has checkpointed round r - 1), so at most two files exist per partition.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedcore.core.tensor_files import load_tensors, save_tensors

#: node config key of the directory holding personal layers
NODE_PERSONAL_DIR = "personal-dir"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_ROUND_FILE = re.compile(r"round-(\d+)\.safetensors")


def default_personal_dir() -> Path:
    """``$XDG_DATA_HOME/fedlayer/personal-layers``, else ``~/.local/share/fedlayer/personal-layers``."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "fedlayer" / "personal-layers"


@dataclass(frozen=True)
class PersonalStore:
    """The personal layers of one client in one run (global parameter names)."""

    folder: Path

    @classmethod
    def for_node(cls, node_config: dict[str, Any], run_name: str, client_key: str) -> PersonalStore:
        """``client_key``: the node's data source's (its partition, or its own data)."""
        if not _RUN_NAME.fullmatch(run_name):
            raise ValueError(f"run name {run_name!r} from the server is not a plain directory name")
        configured = node_config.get(NODE_PERSONAL_DIR)
        root = Path(str(configured)).expanduser() if configured else default_personal_dir()
        return cls(root / run_name / client_key)

    def before(self, round_number: int) -> dict[str, torch.Tensor]:
        """The personal layers as they were after the newest round before ``round_number``."""
        rounds = self._rounds()
        for stale in [r for r in rounds if r >= round_number]:
            self._file(stale).unlink(missing_ok=True)
        earlier = [r for r in rounds if r < round_number]
        for unneeded in earlier[:-1]:
            self._file(unneeded).unlink(missing_ok=True)
        return load_tensors(self._file(earlier[-1]))[0] if earlier else {}

    def save(self, round_number: int, state: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_tensors(self._file(round_number), state)

    def _file(self, round_number: int) -> Path:
        return self.folder / f"round-{round_number}.safetensors"

    def _rounds(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_ROUND_FILE.fullmatch(path.name) for path in self.folder.iterdir())
        return sorted(int(match.group(1)) for match in found if match)
