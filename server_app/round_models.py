"""The global model every ``output.save-every`` rounds, each in its own folder of the run directory.

A round model is saved exactly as the final model is (``model_export.save_portable``), swapped in
atomically as ``model-round-NNNN/`` after the round's global row is logged and before its checkpoint:
a server killed in between redoes the round on resume and saves it again. A resume keeps every round
model up to its checkpoint and removes those of later rounds, which it redoes (as it drops their
metrics rows). ``output.keep-last`` keeps only the newest round models (this project's own options).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from fedcore.config import RunConfig

PREFIX = "model-round-"
_FOLDER = re.compile(rf"^{PREFIX}(\d+)$")
#: a round model's folder, or what an interrupted save leaves beside it (run_log.swap_paths)
_FOLDER_OR_LEFTOVER = re.compile(rf"^\.?{PREFIX}(\d+)(\.tmp|\.old)?$")


def folder_name(round_number: int) -> str:
    """``model-round-0005``: sorted by name, the folders are in round order up to round 9999."""
    return f"{PREFIX}{round_number:04d}"


def is_due(cfg: RunConfig, round_number: int) -> bool:
    """Whether the model of ``round_number`` is saved as a round model."""
    every = cfg.output.save_every
    return every > 0 and round_number % every == 0


def saved_rounds(run_dir: Path) -> dict[int, Path]:
    """Round -> its complete round model folder in ``run_dir``."""
    found = {}
    for path in run_dir.iterdir():
        match = _FOLDER.match(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def drop_after(run_dir: Path, round_number: int) -> None:
    """Remove round models (and leftovers of interrupted saves) of rounds after ``round_number``: a
    resume from that round's checkpoint redoes them."""
    for path in run_dir.iterdir():
        match = _FOLDER_OR_LEFTOVER.match(path.name)
        if match and int(match.group(1)) > round_number and path.is_dir():
            shutil.rmtree(path)


def keep_newest(run_dir: Path, count: int) -> None:
    """Remove all but the newest ``count`` round models (0 keeps all)."""
    if count > 0:
        for path in list(saved_rounds(run_dir).values())[:-count]:
            shutil.rmtree(path)
