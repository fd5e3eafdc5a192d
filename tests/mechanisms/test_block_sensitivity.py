"""Block removal sensitivity: a block that does nothing scores 0, the model is left untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedcore.core.layers import find_blocks
from fedcore.mechanisms.block_sensitivity import block_sensitivity
from fedcore.model import build_model
from tests.conftest import make_tiny_model_dir, tiny_run_config


@pytest.mark.parametrize("task", ["seq-cls", "causal-lm"])
def test_an_identity_block_scores_zero_and_the_model_is_untouched(tmp_path: Path, task: str) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "llama", "llama", layers=4)
    cfg = tiny_run_config(model_dir, tmp_path, method="fedavg", **{"model.task": task})
    model = build_model(cfg, num_labels=2)[0]
    block = find_blocks(model)[1][2]
    with torch.no_grad():  # a pre-norm block whose output projections are zero adds nothing: identity
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (3, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    scores = block_sensitivity(model, [{"input_ids": ids, "attention_mask": mask}])
    assert len(scores) == 4
    assert scores[2] < 1e-6
    assert min(scores[i] for i in (0, 1, 3)) > 1e-3
    assert model.training
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert len(find_blocks(model)[1]) == 4
