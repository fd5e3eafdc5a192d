"""Frozen blocks in bfloat16: half the bytes, arithmetic in float32, gradients reach the window only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fedcore.core.layers import find_blocks
from fedcore.mechanisms.frozen_precision import hold_frozen_blocks
from fedcore.model import build_model
from tests.conftest import make_tiny_model_dir, tiny_run_config


def _linears(block: nn.Module) -> list[nn.Linear]:
    return [m for m in block.modules() if isinstance(m, nn.Linear)]


def _linear_dtypes(block: nn.Module) -> set[torch.dtype]:
    return {p.dtype for linear in _linears(block) for p in linear.parameters()}


def _linear_bytes(block: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for linear in _linears(block) for p in linear.parameters())


def _batch(vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (3, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding: an additive mask enters the frozen blocks too
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_frozen_blocks_hold_bfloat16_compute_in_float32_and_only_the_window_learns(
    tmp_path: Path, arch: str
) -> None:
    model_dir = make_tiny_model_dir(tmp_path / arch, arch, layers=4)
    cfg = tiny_run_config(model_dir, tmp_path, method="fedavg")
    model = build_model(cfg, num_labels=2)[0]
    model.eval()
    batch = _batch(model.config.vocab_size)
    with torch.no_grad():
        reference = model(**batch).logits
    blocks = find_blocks(model)[1]
    full_bytes = _linear_bytes(blocks[0])

    hold_frozen_blocks(model, {2}, "bfloat16", torch.float32)

    assert [_linear_dtypes(block) for block in blocks] == [
        {torch.bfloat16},
        {torch.bfloat16},
        {torch.float32},
        {torch.bfloat16},
    ]
    assert _linear_bytes(blocks[0]) * 2 == full_bytes
    norms = [p for n, p in blocks[0].named_parameters() if "norm" in n.lower()]
    assert norms and all(p.dtype == torch.float32 for p in norms), "norms stay in the model's dtype"
    for param in model.parameters():
        param.requires_grad_(False)
    for param in blocks[2].parameters():
        param.requires_grad_(True)
    output = model(**batch)
    assert output.logits.dtype == torch.float32
    torch.testing.assert_close(output.logits, reference, rtol=0.05, atol=0.05)
    assert not torch.equal(output.logits, reference), "the frozen blocks really hold bfloat16 weights"
    # float32 arithmetic over the rounded weights: the same model built from them in float32 agrees
    # to float32 precision, far closer than bfloat16 arithmetic would
    twin = build_model(cfg, num_labels=2)[0].eval()
    twin_blocks = find_blocks(twin)[1]
    with torch.no_grad():
        for index in (0, 1, 3):
            for linear in _linears(twin_blocks[index]):
                for param in linear.parameters():
                    param.copy_(param.to(torch.bfloat16))
        torch.testing.assert_close(output.logits, twin(**batch).logits, rtol=1e-5, atol=1e-5)
    output.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks[2].parameters() if p.dim() > 1)

    # the next round's window: block 0 comes back to float32, block 2 goes frozen
    hold_frozen_blocks(model, {0}, "bfloat16", torch.float32)
    assert [_linear_dtypes(block) for block in blocks] == [
        {torch.float32},
        {torch.bfloat16},
        {torch.bfloat16},
        {torch.bfloat16},
    ]
    assert all(type(m) is nn.Linear for m in blocks[0].modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        assert model(**batch).logits.dtype == torch.float32


def test_an_unknown_frozen_dtype_is_refused_with_the_name(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "bert", "bert", layers=2)
    model = build_model(tiny_run_config(model_dir, tmp_path, method="fedavg"), num_labels=2)[0]
    with pytest.raises(ValueError, match="frozen_dtype.*'int3'"):
        hold_frozen_blocks(model, {0}, "int3", torch.float32)


def test_a_bfloat16_held_linear_that_asks_for_gradients_is_refused(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "llama", "llama", layers=2)
    model = build_model(tiny_run_config(model_dir, tmp_path, method="fedavg"), num_labels=2)[0]
    hold_frozen_blocks(model, {1}, "bfloat16", torch.float32)
    for param in model.parameters():
        param.requires_grad_(True)  # a frozen block's weights must not train
    output = model(**_batch(model.config.vocab_size))  # evaluation may run with stale flags
    with pytest.raises(RuntimeError, match="frozen: its weight takes no gradient"):
        output.loss.backward()
