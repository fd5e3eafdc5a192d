"""The run directory: resolved config, metrics.jsonl, summary.json and the saved models.

Every file is written via a temporary file and an atomic rename, so an interrupted run leaves complete
files, never half-written ones. metrics.jsonl is appended line by line and flushed: a kill mid-line leaves
a torn last line, which a resume drops with a warning. summary.json is written last: a run directory
without it is unfinished, and a resume can complete it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import ConfigError
from fedcore.core.files import write_atomic, write_json_atomic

SUMMARY = "summary.json"
REPORT = "report.md"
METRICS = "metrics.jsonl"
#: the final model's folder
MODEL = "model"
#: the run's identity: its directory's name and a random suffix, written once, kept by every resume
RUN_ID = "run-id"


class RunDirError(ValueError):
    """A run directory's files are damaged beyond what an interrupted write leaves; names the file."""


def swap_paths(final: Path) -> tuple[Path, Path]:
    """(new version being written, previous version being replaced) beside ``final`` during replace_dir."""
    return final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place; the previous version is removed only afterwards.

    A kill between the two renames leaves no ``final`` but complete copies beside it: recover_dir.
    """
    _, old = swap_paths(final)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path, verify: Callable[[Path], object]) -> bool:
    """After a kill inside replace_dir: move the newest leftover that ``verify`` accepts to ``final``.

    ``verify`` raises on an incomplete or corrupt copy. Returns whether a copy was recovered.
    """
    if final.exists():
        return False
    for candidate in swap_paths(final):
        if not candidate.is_dir():
            continue
        try:
            verify(candidate)
        except (OSError, ValueError):
            continue
        os.replace(candidate, final)
        warnings.warn(f"{final}: recovered from {candidate.name} (a save was interrupted)", stacklevel=2)
        return True
    return False


def is_finished(run_dir: Path) -> bool:
    """Whether the run wrote its summary and then its report, the last things a completed run does (a run
    killed between the two is not finished: a resume completes it)."""
    return (run_dir / SUMMARY).is_file() and (run_dir / REPORT).is_file()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a torn last line (a kill mid-write) is dropped with a warning."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif number == len(lines):
            warnings.warn(
                f"{path}: dropped a torn last line (the run was killed while writing it)", stacklevel=2
            )
        else:
            raise RunDirError(f"{path}: line {number} is not a JSON object (the file is corrupt)")
    return rows


def new_run_dir(parent: str, method: str) -> Path:
    """A fresh ``<timestamp>-<method>`` directory under ``output.dir`` (created if need be)."""
    root = Path(parent).expanduser().resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            path = root / f"{stamp}-{method}{f'-{attempt}' if attempt else ''}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise ConfigError(
            f"output.dir: cannot create a run directory under {root} ({exc.strerror or exc}); "
            "choose a writable directory"
        ) from None
    raise ConfigError(f"output.dir: cannot create a fresh run directory under {root}")


def run_id(run_dir: Path) -> str:
    """The run's identity, created with the run directory (clients store personal layers by it).

    Unlike the directory's name, which only one output directory keeps unique, it differs between runs
    started in the same second elsewhere on the machine, and it survives moving the run directory.
    """
    path = run_dir / RUN_ID
    if not path.is_file():
        write_atomic(path, f"{run_dir.name}-{secrets.token_hex(4)}\n")
    return path.read_text(encoding="utf-8").strip()


class RunLog:
    def __init__(self, run_dir: Path, flat_config: dict[str, Any]) -> None:
        self.dir = run_dir
        self.run_id = run_id(run_dir)
        write_json_atomic(run_dir / "config.json", flat_config)
        self._metrics = (run_dir / METRICS).open("a", encoding="utf-8")

    def row(self, row: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(row, sort_keys=True, default=float) + "\n")
        self._metrics.flush()

    def truncate_after(self, round_number: int) -> None:
        """Drop rows of rounds after a checkpoint (written before a crash, then redone on resume)."""
        self._metrics.close()
        path = self.dir / METRICS
        kept = [row for row in read_rows(path) if row.get("round", 0) <= round_number]
        write_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
        self._metrics = path.open("a", encoding="utf-8")

    def last_global_row(self) -> dict[str, Any]:
        """The newest global row logged (empty for a fresh run): the final row of a run being completed."""
        rows = [row for row in read_rows(self.dir / METRICS) if row.get("kind") == "global"]
        return rows[-1] if rows else {}

    def summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.dir / SUMMARY, summary)

    def save_model(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, card: str, folder: str = MODEL
    ) -> Path:
        """save_pretrained (an adapter for LoRA, the full model otherwise) with ``card`` as README.md,
        swapped in atomically as ``folder`` of the run directory.

        An adapter folder also gets the model's config.json, so its label names travel with it.
        """
        final = self.dir / folder
        tmp, _ = swap_paths(final)
        shutil.rmtree(tmp, ignore_errors=True)
        if type(model).__module__.startswith("peft"):
            # no embedding layer is ever tuned here; peft would otherwise look the base up to check that
            model.save_pretrained(tmp, save_embedding_layers=False)
        else:
            model.save_pretrained(tmp)
        if not (tmp / "config.json").exists():
            model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_atomic(tmp / "README.md", card)
        replace_dir(tmp, final)
        return final

    def close(self) -> None:
        self._metrics.close()
