"""train_plan's precision and start-value options: what a client may switch on to save memory."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from fedcore.config import ConfigError, RunConfig
from fedcore.core.plan import LayerPlan
from fedcore.data.batching import make_batches
from fedcore.model import build_model
from fedcore.training.train import train_plan
from tests.conftest import tiny_run_config

PLAN = LayerPlan(round=1, rounds=1, train_groups=("block.0", "block.1", "head"), steps=3, lr=1e-2, seed=0)


def _model_and_batches(tiny_models: dict[str, Path], tmp_path: Path) -> tuple[torch.nn.Module, list]:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="fedavg")
    model, tokenizer = build_model(cfg, num_labels=2)
    words = ["good fun film", "dull and long", "a fine story", "the worst plot"] * 4
    table = Dataset.from_dict({"text": words, "label": [1, 0, 1, 0] * 4})
    return model, make_batches(table, tokenizer, "seq-cls", max_length=32, batch_size=8)


def test_given_start_values_give_the_same_update(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model, batches = _model_and_batches(tiny_models, tmp_path)
    twin = copy.deepcopy(model)
    start = {name: p.detach().clone() for name, p in twin.named_parameters()}

    reference = train_plan(model, batches, PLAN)
    spared = train_plan(twin, batches, PLAN, start=start)

    assert reference.update.keys() == spared.update.keys()
    for name, delta in reference.update.items():
        assert torch.equal(spared.update[name], delta), name
        assert delta.abs().sum() > 0, name


def test_bf16_keeps_fp32_weights_and_saves_activation_memory(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    model, batches = _model_and_batches(tiny_models, tmp_path)
    twin = copy.deepcopy(model)

    full = train_plan(model, batches, PLAN, precision="fp32")
    half = train_plan(twin, batches, PLAN, precision="bf16")

    assert all(p.dtype == torch.float32 for p in twin.parameters())
    assert all(delta.dtype == torch.float32 for delta in half.update.values())
    assert half.metrics["activation_mb"] < full.metrics["activation_mb"]  # matmul inputs kept in bf16
    assert half.metrics["train_loss"] == pytest.approx(full.metrics["train_loss"], rel=0.05)
    # Same data and seed: bf16 rounding must not change where training goes.
    names = sorted(full.update)
    full_vector = torch.cat([full.update[n].flatten() for n in names])
    half_vector = torch.cat([half.update[n].flatten() for n in names])
    assert torch.nn.functional.cosine_similarity(full_vector, half_vector, dim=0) > 0.9


def test_unknown_precision_is_refused_with_the_key() -> None:
    with pytest.raises(ConfigError, match="train.precision"):
        RunConfig.from_flat({"train.precision": "fp8"})
