"""Files written whole or not at all: a temporary file beside the target, then an atomic rename.

A reader, or a run interrupted mid-write, sees the old file or the new one, never half of one. The
temporary file is flushed to disk before the rename, so a power cut cannot leave a renamed empty file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_beside(dest: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A hidden temp file in dest's directory (so os.replace is atomic), readable like any other file."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.chmod(temp_name, 0o644)
    return fd, Path(temp_name)


@contextmanager
def replacing(dest: Path) -> Iterator[Path]:
    """Yield a temp path to write dest's new content to; on success it replaces dest, else it is removed."""
    fd, temp = temp_beside(dest)
    os.close(fd)
    try:
        yield temp
        with temp.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_atomic(dest: Path, data: bytes | str) -> None:
    with replacing(dest) as temp:
        temp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(dest: Path, value: Any) -> None:
    write_atomic(dest, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
