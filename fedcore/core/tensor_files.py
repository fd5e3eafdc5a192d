"""Tensor files that carry a hash of their own values, written atomically and verified on every read.

A safetensors file with a sha256 of its names, dtypes, shapes and bytes in its metadata: a flipped byte,
a truncated file or a file swapped for another fails on load with an error naming the file, instead of
feeding silently wrong numbers into a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fedcore.core.files import replacing

#: metadata key of the content hash
DIGEST_KEY = "fedlayer.sha256"


class CorruptTensorFile(ValueError):
    """A tensor file is unreadable or its values do not match its hash; the message names the file."""


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(path: Path, state: Mapping[str, torch.Tensor]) -> str:
    """Write state to path whole or not at all; returns its content hash."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    digest = state_digest(tensors)
    with replacing(path) as temp:
        save_file(tensors, temp, metadata={DIGEST_KEY: digest})
    return digest


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a file written by save_tensors and their verified content hash."""
    try:
        with safe_open(str(path), framework="pt") as source:
            expected = (source.metadata() or {}).get(DIGEST_KEY)
            state = {name: source.get_tensor(name) for name in source.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (OSError, ValueError, SafetensorError) as exc:
        raise CorruptTensorFile(f"{path} is unreadable or corrupt: {exc}") from None
    if expected is None:
        raise CorruptTensorFile(f"{path} carries no content hash (not written by fedlayer, or too old)")
    digest = state_digest(state)
    if digest != expected:
        raise CorruptTensorFile(f"{path} is corrupt: its values do not match the hash stored with them")
    return state, digest
