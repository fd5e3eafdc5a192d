"""Round checkpoints: everything the server needs to continue a run after a crash.

After every completed round the server writes ``checkpoint/`` in the run directory: the global tunable
state (safetensors) and ``checkpoint.json`` (round, planner state, best accuracy, elapsed time, the run
config and a fingerprint of the model's tunable parameters). Both files are written to a temporary
directory first and swapped in with one rename, so a crash never leaves a half-written checkpoint.
Every other random choice derives from (seed, round, partition), so no RNG state needs saving.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedcore.config import RunConfig
from server_app.run_log import replace_dir

CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1
#: config sections that must not change when a run is resumed (they define what is being trained)
_FIXED_PREFIXES = ("method", "seed", "model.", "tuning.", "data.", "drop.", "ptls.", "devices.")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or belongs to another run; the message names the file."""


@dataclass
class Checkpoint:
    round: int
    global_state: dict[str, torch.Tensor]
    planner_state: dict[str, Any]
    best_accuracy: float | None
    elapsed_s: float
    config: dict[str, Any]


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Names, shapes and dtypes of the tunable parameters: two runs with equal fingerprints are compatible."""
    layout = sorted((name, tuple(t.shape), str(t.dtype)) for name, t in state.items())
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / f".{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {name: t.detach().contiguous() for name, t in checkpoint.global_state.items()}
    save_file(state, tmp / "global.safetensors")
    meta = {
        "format": FORMAT_VERSION,
        "round": checkpoint.round,
        "planner": checkpoint.planner_state,
        "best_accuracy": checkpoint.best_accuracy,
        "elapsed_s": checkpoint.elapsed_s,
        "config": checkpoint.config,
        "fingerprint": fingerprint(state),
    }
    (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    replace_dir(tmp, final)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    folder = Path(run_dir) / CHECKPOINT_DIR
    meta_path = folder / "checkpoint.json"
    state_path = folder / "global.safetensors"
    if not meta_path.is_file() or not state_path.is_file():
        raise CheckpointError(
            f"resume-from: no checkpoint in {folder} (a run writes one after each completed round)"
        )
    try:
        meta = json.loads(meta_path.read_text())
        state = load_file(state_path)
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"resume-from: checkpoint {folder} is unreadable or corrupt: {exc}") from None
    if meta.get("format") != FORMAT_VERSION or not isinstance(meta.get("round"), int):
        raise CheckpointError(
            f"resume-from: {meta_path} is not a fedlayer checkpoint of format {FORMAT_VERSION}"
        )
    if fingerprint(state) != meta.get("fingerprint"):
        raise CheckpointError(
            f"resume-from: {state_path} does not match {meta_path} (corrupt or mixed files)"
        )
    return Checkpoint(
        round=meta["round"],
        global_state=state,
        planner_state=meta["planner"],
        best_accuracy=meta["best_accuracy"],
        elapsed_s=meta["elapsed_s"],
        config=meta["config"],
    )


def check_compatible(checkpoint: Checkpoint, cfg: RunConfig, model_state: dict[str, torch.Tensor]) -> None:
    """Refuse to continue a checkpoint with another model, method, data or tuning."""
    current = cfg.to_flat()
    changed = [
        key
        for key in sorted(set(current) | set(checkpoint.config))
        if key.startswith(_FIXED_PREFIXES) and current.get(key) != checkpoint.config.get(key)
    ]
    if changed:
        details = ", ".join(f"{k}: {checkpoint.config.get(k)!r} -> {current.get(k)!r}" for k in changed[:4])
        raise CheckpointError(f"resume-from: the checkpoint was made with different settings ({details})")
    if fingerprint(checkpoint.global_state) != fingerprint(model_state):
        raise CheckpointError("resume-from: the checkpoint's parameters do not fit this model")
    if checkpoint.round >= cfg.rounds:
        raise CheckpointError(
            f"resume-from: the checkpoint already completed round {checkpoint.round} of rounds={cfg.rounds}"
        )
