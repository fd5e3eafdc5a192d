"""Files written whole or not at all: a temporary file beside the target, then an atomic rename.

A reader, or a run interrupted mid-write, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def temp_beside(dest: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A hidden temp file in dest's directory (so os.replace is atomic), readable like any other file."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.chmod(temp_name, 0o644)
    return fd, Path(temp_name)


def write_atomic(dest: Path, data: bytes | str) -> None:
    fd, temp = temp_beside(dest)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(dest: Path, value: Any) -> None:
    write_atomic(dest, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
