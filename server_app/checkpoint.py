"""Round checkpoints: everything the server needs to continue a run after a crash.

After every completed round the server writes ``checkpoint/`` in the run directory: the global tunable
state and the server optimiser's state (safetensors files, each carrying a hash of its values; FedAdam's
moments and counts, nothing for FedAvg's step) and ``checkpoint.json`` (round, planner state, best
accuracy, elapsed time, the run config, a fingerprint of the model's tunable parameters and both files'
hashes), itself under a hash of all its other fields, so the whole checkpoint is covered by one chain of
hashes: an edited round number or planner state is refused like a damaged tensor. All three files are
written to a temporary directory first and swapped in with renames; a kill between the renames is
recovered from the complete copy left beside it. On load every value is verified against its hash and
must be finite, so a damaged checkpoint is refused instead of resumed.
Every other random choice derives from (seed, round, partition), so no RNG state needs saving.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcore.config import RunConfig
from fedcore.core.files import write_atomic
from fedcore.core.server_optimizer import ServerOptimizer
from fedcore.core.tensor_files import CorruptTensorFile, load_tensors, save_tensors
from server_app.run_log import is_finished, recover_dir, replace_dir, swap_paths
from server_app.server_optimizer import make_server_optimizer

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "global.safetensors"
OPTIMIZER_FILE = "server-optimizer.safetensors"
META_FILE = "checkpoint.json"
FORMAT_VERSION = 4
#: config sections that must not change when a run is resumed (they define what is being trained)
_FIXED_PREFIXES = ("method", "seed", "model.", "tuning.", "data.", "drop.", "ptls.", "devices.")
_REQUIRED = (
    "round",
    "planner",
    "best_accuracy",
    "elapsed_s",
    "config",
    "holders",
    "fingerprint",
    "state_sha256",
    "optimizer_sha256",
)
_META_HASH = "meta_sha256"


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
    #: partition -> the node id that holds it in this run (server_app/nodes.py assign_partitions)
    holders: dict[int, int]
    #: the server optimiser's ``state_dict()`` (empty for FedAvg's step)
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Names, shapes and dtypes of the tunable parameters: two runs with equal fingerprints are compatible."""
    layout = sorted((name, tuple(t.shape), str(t.dtype)) for name, t in state.items())
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    final = run_dir / CHECKPOINT_DIR
    tmp, _ = swap_paths(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    digest = save_tensors(tmp / STATE_FILE, checkpoint.global_state)
    optimizer_digest = save_tensors(tmp / OPTIMIZER_FILE, checkpoint.optimizer_state)
    meta = {
        "format": FORMAT_VERSION,
        "round": checkpoint.round,
        "planner": checkpoint.planner_state,
        "best_accuracy": checkpoint.best_accuracy,
        "elapsed_s": checkpoint.elapsed_s,
        "config": checkpoint.config,
        "holders": {str(partition): node for partition, node in checkpoint.holders.items()},
        "fingerprint": fingerprint(checkpoint.global_state),
        "state_sha256": digest,
        "optimizer_sha256": optimizer_digest,
    }
    meta[_META_HASH] = _meta_digest(meta)
    write_atomic(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    replace_dir(tmp, final)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The run's verified checkpoint, recovered from an interrupted swap if need be."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    recover_dir(folder, read_checkpoint)
    if not all((folder / name).is_file() for name in (META_FILE, STATE_FILE, OPTIMIZER_FILE)):
        raise CheckpointError(
            f"resume-from: no checkpoint in {folder} (a run writes one after each completed round)"
        )
    return read_checkpoint(folder)


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read and verify one checkpoint directory: every problem is a CheckpointError naming the file."""
    meta_path, state_path, optimizer_path = folder / META_FILE, folder / STATE_FILE, folder / OPTIMIZER_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"resume-from: {meta_path} is unreadable or corrupt: {exc}") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT_VERSION:
        raise CheckpointError(
            f"resume-from: {meta_path} is not a fedlayer checkpoint of format {FORMAT_VERSION} (format: "
            f"{found!r}); resume it with the fedlayer version that wrote it, or start the run afresh"
        )
    missing = [key for key in (*_REQUIRED, _META_HASH) if key not in meta]
    if missing:
        raise CheckpointError(f"resume-from: {meta_path} lacks {', '.join(missing)} (corrupt or edited)")
    if _meta_digest(meta) != meta[_META_HASH]:
        raise CheckpointError(
            f"resume-from: {meta_path} does not match its hash (edited or corrupt); resume from an intact "
            "copy or start afresh"
        )
    _check_meta_types(meta, meta_path)
    state, digest = _load(state_path)
    if digest != meta["state_sha256"] or fingerprint(state) != meta["fingerprint"]:
        raise CheckpointError(
            f"resume-from: {state_path} does not match {meta_path} (corrupt or mixed files)"
        )
    _check_usable(state, state_path)
    optimizer_state, optimizer_digest = _load(optimizer_path)
    if optimizer_digest != meta["optimizer_sha256"]:
        raise CheckpointError(
            f"resume-from: {optimizer_path} does not match {meta_path} (corrupt or mixed files)"
        )
    _check_usable(optimizer_state, optimizer_path)
    return Checkpoint(
        round=meta["round"],
        global_state=state,
        planner_state=meta["planner"],
        best_accuracy=meta["best_accuracy"],
        elapsed_s=meta["elapsed_s"],
        config=meta["config"],
        holders={int(partition): node for partition, node in meta["holders"].items()},
        optimizer_state=optimizer_state,
    )


def _load(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    try:
        return load_tensors(path)
    except CorruptTensorFile as exc:
        raise CheckpointError(f"resume-from: checkpoint file {exc}") from None


def _meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of every field but the hash itself, in canonical JSON."""
    fields = {key: value for key, value in meta.items() if key != _META_HASH}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _check_meta_types(meta: dict[str, Any], meta_path: Path) -> None:
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    valid = {
        "round": isinstance(meta["round"], int)
        and not isinstance(meta["round"], bool)
        and meta["round"] >= 1,
        "planner": isinstance(meta["planner"], dict),
        "best_accuracy": meta["best_accuracy"] is None or number(meta["best_accuracy"]),
        "elapsed_s": number(meta["elapsed_s"]) and meta["elapsed_s"] >= 0,
        "config": isinstance(meta["config"], dict),
        "holders": isinstance(meta["holders"], dict)
        and all(key.isdigit() and isinstance(node, int) for key, node in meta["holders"].items()),
    }
    bad = [key for key, ok in valid.items() if not ok]
    if bad:
        shown = ", ".join(f"{key}={meta[key]!r}" for key in bad)
        raise CheckpointError(f"resume-from: {meta_path} has invalid values ({shown})")


def _check_usable(state: dict[str, torch.Tensor], path: Path) -> None:
    """Every value finite, and every tensor's squared norm too: fp32 arithmetic cannot use larger values."""
    bad = [name for name, t in state.items() if not torch.isfinite(t.float().pow(2).sum())]
    if bad:
        raise CheckpointError(
            f"resume-from: {path} holds non-finite or overflowing values in {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}; resume from an earlier copy or start afresh"
        )


def check_compatible(checkpoint: Checkpoint, cfg: RunConfig, model_state: dict[str, torch.Tensor]) -> None:
    """Refuse to continue a checkpoint with another model, method, data or tuning, or a finished run."""
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
    # A run killed while saving its final model has its last checkpoint but no summary: resume completes it.
    finished = is_finished(Path(cfg.resume_from).expanduser().resolve())
    if checkpoint.round > cfg.rounds or (checkpoint.round == cfg.rounds and finished):
        raise CheckpointError(
            f"resume-from: the checkpoint already completed round {checkpoint.round} of rounds={cfg.rounds}"
        )


def restore_optimizer(run_dir: Path, checkpoint: Checkpoint, cfg: RunConfig) -> ServerOptimizer:
    """The run's server optimiser continued from the checkpoint: a state made by another optimiser, or one
    this optimiser cannot have made, is refused naming the file."""
    path = Path(run_dir) / CHECKPOINT_DIR / OPTIMIZER_FILE
    made_with = checkpoint.config.get("server.optimizer")
    if made_with != cfg.server.optimizer:
        raise CheckpointError(
            f"resume-from: {path} holds the state of server.optimizer={made_with!r}, but this run sets "
            f"server.optimizer={cfg.server.optimizer!r}; resume with server.optimizer={made_with!r}"
        )
    optimizer = make_server_optimizer(cfg.server)
    try:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    except ValueError as exc:
        raise CheckpointError(
            f"resume-from: {path} does not fit server.optimizer={cfg.server.optimizer!r} ({exc})"
        ) from None
    return optimizer
