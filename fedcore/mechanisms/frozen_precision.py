"""Frozen blocks held in bfloat16: LEFF's stand-in for the blocks a client does not train.

This project's alternative to LEFF's distilled students (``leff.stand-in='bfloat16'``): instead of a
shallower student distilled for a few steps, the client holds the frozen blocks themselves at half the
bytes. Distilled students leave much of the teacher's variance unexplained on the clients' text and cost
the server most of a round (``docs/research/leff-students.md``); a bfloat16 copy of a
block differs from it only by rounding. The memory is about that of students at compression 0.5 (half the
bytes per block), there is no distillation, and the window trains on the features the global model
produces.

bfloat16 is the blocks' storage, not their arithmetic: a frozen block's linear layers (nearly all of its
bytes) keep their weights in bfloat16 and multiply in the model's dtype, widening one weight at a time
and again in the backward pass instead of keeping the wide copy; its norms stay in the model's dtype.
Arithmetic in bfloat16 is many times slower than float32 on a CPU without bfloat16 instructions, where
simulations and many workstations run (``docs/research/leff-stand-ins.md``).
Only ``torch.nn.Linear`` is held lower; other modules (e.g. GPT-2's ``Conv1D``) stay in the model's dtype.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from torch.nn import functional

from fedcore.core.layers import find_blocks

#: the dtype names a plan may carry in ``frozen_dtype``
FROZEN_DTYPES = {"bfloat16": torch.bfloat16}


class _LinearOverStoredWeight(torch.autograd.Function):
    """``x @ weight.T + bias`` computed in ``x``'s dtype from a frozen weight stored narrower.

    Only the narrow weight is saved for the backward pass (a frozen weight needs no gradient, the input
    does), so no wide copy outlives the multiplication that uses it.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise RuntimeError("a linear layer held in bfloat16 is frozen: its weight takes no gradient")
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None


class FrozenLowPrecisionLinear(nn.Linear):
    """A frozen ``nn.Linear`` whose parameters are stored in a narrower dtype than its inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearOverStoredWeight.apply(x, self.weight, self.bias)


def _hold_linear(
    linear: nn.Linear, frozen: bool, frozen_dtype: torch.dtype, model_dtype: torch.dtype
) -> None:
    """``linear`` stored in ``frozen_dtype`` and computing through the wide copy, or plain again."""
    wanted = frozen_dtype if frozen else model_dtype
    if linear.weight.dtype != wanted:
        linear.to(wanted)
    linear.__class__ = FrozenLowPrecisionLinear if frozen else nn.Linear


def hold_frozen_blocks(
    model: nn.Module, trained_blocks: Collection[int], frozen_dtype: str, model_dtype: torch.dtype
) -> None:
    """Blocks in ``trained_blocks`` wholly in ``model_dtype``; the linear layers of every other block
    stored in ``frozen_dtype`` (computing in ``model_dtype``), their other tensors in ``model_dtype``.

    Called every round (the window moves): a tensor changes dtype only when its role changed, and its
    values are then overwritten by the server's anyway.
    """
    if frozen_dtype not in FROZEN_DTYPES:
        raise ValueError(f"frozen_dtype must be one of {sorted(FROZEN_DTYPES)}, got '{frozen_dtype}'")
    _, blocks = find_blocks(model)
    for index, block in enumerate(blocks):
        frozen = index not in trained_blocks
        linears = [m for m in block.modules() if type(m) in (nn.Linear, FrozenLowPrecisionLinear)]
        for linear in linears:
            _hold_linear(linear, frozen, FROZEN_DTYPES[frozen_dtype], model_dtype)
        held_low = {id(p) for linear in linears for p in linear.parameters()} if frozen else set()
        for tensor in [*block.parameters(), *block.buffers()]:
            if tensor.is_floating_point() and id(tensor) not in held_low and tensor.dtype != model_dtype:
                tensor.data = tensor.data.to(model_dtype)
