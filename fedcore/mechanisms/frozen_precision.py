"""Frozen blocks held and run in bfloat16: LEFF's stand-in for the blocks a client does not train.

This project's alternative to LEFF's distilled students (``leff.stand-in='bfloat16'``): instead of a
shallower student distilled for a few steps, the client holds the frozen blocks themselves at half the
bytes. Distilled students left 0.23-0.56 of the teacher's variance unexplained on the clients' text
(``benchmarks/results/leff_distill_lr.md``) and cost the server most of a round; a bfloat16 copy of a
block differs from it only by rounding. The memory is about that of students at compression 0.5 (half the
bytes per block), there is no distillation, and the window trains on the features the global model
produces.

A block in bfloat16 computes in bfloat16: hooks cast the floating tensors entering it (hidden states,
rotary tables, additive masks) to its dtype and those leaving it back to the model's, so the blocks need
no architecture-specific code and gradients flow through the casts to the trained window.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from fedcore.core.layers import find_blocks

#: the dtype names a plan may carry in ``frozen_dtype``
FROZEN_DTYPES = {"bfloat16": torch.bfloat16}
_HOOKED = "_fedlayer_casts_at_its_dtype"


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating tensor in it (through tuples, lists and dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def _block_dtype(block: nn.Module) -> torch.dtype:
    return next(block.parameters()).dtype


def _install_casts(block: nn.Module, model_dtype: torch.dtype) -> None:
    """Hooks that run ``block`` at its own dtype inside a model computing in ``model_dtype`` (once)."""
    if getattr(block, _HOOKED, False):
        return

    def enter(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        dtype = _block_dtype(module)
        return None if dtype == model_dtype else (_cast(args, dtype), _cast(kwargs, dtype))

    def leave(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return None if _block_dtype(module) == model_dtype else _cast(output, model_dtype)

    block.register_forward_pre_hook(enter, with_kwargs=True)
    block.register_forward_hook(leave, with_kwargs=True)
    setattr(block, _HOOKED, True)


def hold_frozen_blocks(
    model: nn.Module, trained_blocks: Collection[int], frozen_dtype: str, model_dtype: torch.dtype
) -> None:
    """Blocks in ``trained_blocks`` in ``model_dtype``, every other block in ``frozen_dtype``, in place.

    Called every round (the window moves): a block changes dtype only when its role changed, and its
    values are then overwritten by the server's anyway.
    """
    if frozen_dtype not in FROZEN_DTYPES:
        raise ValueError(f"frozen_dtype must be one of {sorted(FROZEN_DTYPES)}, got '{frozen_dtype}'")
    _, blocks = find_blocks(model)
    for index, block in enumerate(blocks):
        _install_casts(block, model_dtype)
        wanted = model_dtype if index in trained_blocks else FROZEN_DTYPES[frozen_dtype]
        if _block_dtype(block) != wanted:
            block.to(wanted)
