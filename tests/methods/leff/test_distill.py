"""LEFF compression of unselected blocks by distillation.

The mechanism is generic, so every architecture must pass the same check: a full-depth student (exact
copies) fed the captured teacher input reproduces the teacher segment exactly. Distillation must then make a
shallower student closer to its segment, and the server's model must come back exactly as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig

from fedcore.core.layers import find_blocks, swap_blocks
from fedcore.data.batching import Batch
from fedcore.mechanisms.block_sensitivity import block_sensitivity
from fedcore.methods.leff.distill import (
    CompressedSegment,
    distill_segment,
    init_student,
    segments_outside,
    student_depth,
    student_sources,
)
from fedcore.model import build_model
from tests.conftest import ARCHITECTURES, make_tiny_model_dir, tiny_run_config

DECODERS = ("gpt2", "llama", "qwen2")


@pytest.fixture(scope="module")
def deep_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deep-models")
    return {arch: make_tiny_model_dir(root / arch, arch, layers=8) for arch in ("bert", "llama")}


def _model(model_dir: Path, tmp_path: Path, arch: str) -> nn.Module:
    task = "causal-lm" if arch in DECODERS else "seq-cls"
    cfg = tiny_run_config(model_dir, tmp_path, method="fedavg", **{"model.task": task})
    return build_model(cfg, num_labels=2)[0]


def _proxy(model: nn.Module, count: int = 8) -> list[Batch]:
    """Unlabelled random-token batches with some right padding, like tokenized proxy text."""
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    batches = []
    for _ in range(count):
        ids = torch.randint(5, vocab, (4, 12), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, 8:] = 0
        batches.append({"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask})
    return batches


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "modes": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        "blocks": find_blocks(model)[1],
        "config": (model.config._attn_implementation, getattr(model.config, "use_cache", None)),
    }


def _assert_as_found(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["blocks"] is before["blocks"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    for key in ("flags", "modes", "hooks", "config"):
        assert after[key] == before[key], key
    assert all(after["grads"][n] is g for n, g in before["grads"].items())


def _assert_frozen_student(part: CompressedSegment, depth: int) -> None:
    assert len(part.blocks) == depth == len(part.source_indices)
    assert not any(p.requires_grad for p in part.blocks.parameters())
    assert all(p.grad is None for p in part.blocks.parameters())


def test_segments_outside_the_window() -> None:
    assert segments_outside(0, 2, 8) == [range(2, 8)]
    assert segments_outside(3, 2, 8) == [range(0, 3), range(5, 8)]
    assert segments_outside(6, 2, 8) == [range(0, 6)]
    assert segments_outside(0, 8, 8) == []
    for start, width in ((7, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="does not fit"):
            segments_outside(start, width, 8)


def test_student_depth_is_ceil_within_bounds() -> None:
    assert student_depth(4, 0.5) == 2
    assert student_depth(3, 0.5) == 2
    assert student_depth(10, 0.3) == 3  # 10 * 0.3 is 3.0000000000000004 in floating point
    assert student_depth(5, 0.01) == 1
    assert student_depth(4, 1.0) == student_depth(4, 1.5) == 4
    for n, ratio in ((0, 0.5), (4, 0.0)):
        with pytest.raises(ValueError):
            student_depth(n, ratio)


def test_student_depth_exempts_kept_blocks_from_compression() -> None:
    """``leff.keep-protected``: kept blocks count whole, only the others are compressed."""
    assert student_depth(10, 0.5, kept=3) == 3 + 4
    assert student_depth(3, 0.5, kept=3) == 3  # a segment of protected blocks stays exact
    assert student_depth(4, 0.5, kept=0) == student_depth(4, 0.5) == 2
    assert student_depth(6, 0.01, kept=1) == 2
    for kept in (-1, 5):
        with pytest.raises(ValueError, match="kept"):
            student_depth(4, 0.5, kept=kept)


def test_init_student_copies_uniformly_spaced_blocks() -> None:
    teachers = [nn.Linear(2, 2) for _ in range(7)]
    student, sources = init_student(teachers, 3)
    assert sources == [0, 3, 6]
    for block, index in zip(student, sources, strict=True):
        assert block is not teachers[index] and torch.equal(block.weight, teachers[index].weight)
        assert block.weight.data_ptr() != teachers[index].weight.data_ptr()
    assert init_student(teachers[:5], 2)[1] == [0, 4]
    assert init_student(teachers[:6], 4)[1] == [0, 2, 3, 5]
    assert init_student(teachers[:4], 1)[1] == [3]  # a one-block student is the segment's last
    assert init_student(teachers[:4], 4)[1] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="1..4"):
        init_student(teachers[:4], 5)


def test_student_sources_by_sensitivity_keep_the_most_sensitive_in_order() -> None:
    assert student_sources(6, 3, [0.1, 2.0, 0.2, 0.1, 1.5, 0.3]) == [1, 4, 5]
    assert student_sources(6, 3, [0.1, 2.0, 0.2, 0.1, 1.5, 0.0]) == [1, 4, 5], "the last block always"
    assert student_sources(5, 2, [0.5, 0.1, 0.5, 0.2, 0.0]) == [2, 4], "a tie goes to the later block"
    assert student_sources(4, 1, [9.0, 9.0, 9.0, 0.0]) == [3], "one block: the segment's last"
    assert student_sources(4, 4, [0.0] * 4) == [0, 1, 2, 3]
    assert student_sources(7, 3) == [0, 3, 6], "no sensitivity: uniformly spaced"
    with pytest.raises(ValueError, match="3 scores for a segment of 4"):
        student_sources(4, 2, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="1..4"):
        student_sources(4, 0, [1.0] * 4)


def _make_identity(model: nn.Module, indices: list[int]) -> None:
    """Zero the output projections of these llama blocks: each then passes its input through unchanged."""
    blocks = find_blocks(model)[1]
    with torch.no_grad():
        for i in indices:
            blocks[i].self_attn.o_proj.weight.zero_()
            blocks[i].mlp.down_proj.weight.zero_()


def test_a_sensitive_student_keeps_the_blocks_that_matter(
    deep_models: dict[str, Path], tmp_path: Path
) -> None:
    """Blocks 4, 6 and 7 do nothing: a 2-block student keeps the segment's last block (7) and the one
    measured sensitivity finds (5), and reproduces the segment exactly, while uniform spacing (4 and 7)
    loses block 5."""
    model = _model(deep_models["llama"], tmp_path, "llama")
    _make_identity(model, [4, 6, 7])
    batches = _proxy(model)
    scores = block_sensitivity(model, batches)
    assert scores[4] == scores[6] == scores[7] == 0 < scores[5]
    segment = range(4, 8)
    kwargs: dict[str, Any] = {"steps": 0, "lr": 1e-3, "alpha": 0.0, "seed": 0}
    sensitive = distill_segment(
        model, segment, 2, batches, sensitivity=[scores[i] for i in segment], **kwargs
    )
    uniform = distill_segment(model, segment, 2, batches, **kwargs)
    assert sensitive.source_indices == [5, 7] and uniform.source_indices == [4, 7]
    assert sensitive.error_before < 1e-6 < 1e-2 < uniform.error_before
    blocks = find_blocks(model)[1]
    for student_block, teacher in zip(sensitive.blocks, (blocks[5], blocks[7]), strict=True):
        for a, b in zip(student_block.parameters(), teacher.parameters(), strict=True):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_depth_student_reproduces_the_segment(
    arch: str, alpha: float, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Exact copies fed the captured teacher input give the teacher's output: hooks and swap are right."""
    model = _model(tiny_models[arch], tmp_path, arch)
    batches = _proxy(model, count=2)
    # transformers installs its output-capturing hooks lazily on the first output_attentions call
    model(**batches[0], output_attentions=True)
    before = _snapshot(model)
    part = distill_segment(model, range(1, 3), 2, batches, steps=0, lr=1e-3, alpha=alpha, seed=0)
    assert part.source_indices == [1, 2]
    assert part.error_before < 1e-12 and part.error_after == part.error_before
    _assert_frozen_student(part, 2)
    configs = [v for m in part.blocks.modules() for v in vars(m).values() if isinstance(v, PretrainedConfig)]
    assert all(config is model.config for config in configs)
    _assert_as_found(model, before)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_distillation_brings_a_shallow_student_closer(
    arch: str, deep_models: dict[str, Path], tmp_path: Path
) -> None:
    model = _model(deep_models[arch], tmp_path, arch)
    model.train()
    batches = _proxy(model)
    before = _snapshot(model)
    window = range(2, 4)
    head, tail = segments_outside(window.start, len(window), 8)
    first = distill_segment(model, head, 1, batches, steps=3, lr=1e-3, alpha=0.0, seed=0)
    last = distill_segment(model, tail, student_depth(4, 0.5), batches, steps=30, lr=1e-3, alpha=0.0, seed=0)
    _assert_as_found(model, before)
    _assert_frozen_student(first, 1)
    _assert_frozen_student(last, 2)
    assert first.source_indices == [1] and last.source_indices == [4, 7]
    assert last.error_after < last.error_before
    assert last.seconds > 0

    blocks = find_blocks(model)[1]
    layout = nn.ModuleList([*first.blocks, *(blocks[i] for i in window), *last.blocks])
    assert list(layout) == [first.blocks[0], blocks[2], blocks[3], *last.blocks]
    with torch.no_grad(), swap_blocks(model, layout):
        assert find_blocks(model)[1] is layout
        logits = model.eval()(**batches[0]).logits
    assert torch.isfinite(logits).all() and find_blocks(model)[1] is blocks


def test_attention_distillation_on_bert(deep_models: dict[str, Path], tmp_path: Path) -> None:
    """alpha > 0 switches SDPA to eager only while distilling, and the KL term changes what is learnt."""
    model = _model(deep_models["bert"], tmp_path, "bert")
    batches = _proxy(model)
    assert model.config._attn_implementation == "sdpa"
    kwargs: dict[str, Any] = {"steps": 30, "lr": 1e-3, "seed": 0}
    with_kl = distill_segment(model, range(4, 8), 2, batches, alpha=0.5, **kwargs)
    assert model.config._attn_implementation == "sdpa"
    assert torch.isfinite(torch.tensor([with_kl.error_before, with_kl.error_after])).all()
    assert with_kl.error_after < with_kl.error_before
    without_kl = distill_segment(model, range(4, 8), 2, batches, alpha=0.0, **kwargs)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(with_kl.blocks.parameters(), without_kl.blocks.parameters(), strict=True)
    )


def test_a_warm_start_continues_from_the_earlier_student(
    deep_models: dict[str, Path], tmp_path: Path
) -> None:
    model = _model(deep_models["llama"], tmp_path, "llama")
    batches = _proxy(model)
    before = _snapshot(model)
    segment = range(4, 8)
    cold = distill_segment(model, segment, 2, batches, steps=10, lr=1e-3, alpha=0.0, seed=0)
    warm = distill_segment(
        model, segment, 2, batches, steps=10, lr=1e-3, alpha=0.0, seed=0, initial=cold.blocks
    )
    _assert_as_found(model, before)
    _assert_frozen_student(warm, 2)
    assert warm.error_before == pytest.approx(cold.error_after), "starts where the earlier student ended"
    assert warm.error_after < cold.error_after
    assert all(a is not b for a, b in zip(warm.blocks.parameters(), cold.blocks.parameters(), strict=True))
    unchanged = distill_segment(
        model, segment, 2, batches, steps=0, lr=1e-3, alpha=0.0, seed=0, initial=cold.blocks
    )
    for a, b in zip(unchanged.blocks.parameters(), cold.blocks.parameters(), strict=True):
        assert torch.equal(a, b), "the earlier student itself is never trained further"
    with pytest.raises(ValueError, match="initial student has 2 blocks, expected 3"):
        distill_segment(model, segment, 3, batches, steps=1, lr=1e-3, alpha=0.0, seed=0, initial=cold.blocks)
