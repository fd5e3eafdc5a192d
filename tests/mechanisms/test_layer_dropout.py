"""Stochastic transformer layer dropout: configurations, sampling, real skipping, and full-depth eval.

A configuration's mean drop rate is what its label says; dropped blocks must do no forward or backward
work (that is the memory and compute the method saves), the model must get its full block list back
afterwards, and dropping nothing must change nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.core.layers import LayerMap, find_blocks
from fedcore.core.plan import LayerPlan
from fedcore.data.batching import Batch, make_batches
from fedcore.mechanisms.layer_dropout import (
    MAX_MATCHED_RATE,
    DropConfig,
    only_blocks,
    protected_blocks,
    sample_active_blocks,
    sensitivity_weights,
    speed_matched,
    spread_rate,
)
from fedcore.model import build_model
from fedcore.training.evaluate import evaluate
from fedcore.training.memory import ActivationMeter
from fedcore.training.train import drop_scale, train_plan
from tests.conftest import ARCHITECTURES, tiny_run_config

NUM_BLOCKS = 4
TEXTS = ["good film", "awful boring plot and bad acting", "the best movie", "a dull story"]
#: (arch, method, task): every architecture, the decoders also as LMs, and LoRA-wrapped models
FORWARD_CASES = [
    *((arch, "fedavg", "seq-cls") for arch in ARCHITECTURES),
    *((arch, "fedavg", "causal-lm") for arch in ("gpt2", "llama", "qwen2")),
    ("bert", "fedlora", "seq-cls"),
    ("llama", "fedlora", "causal-lm"),
]


def _build(
    model_dir: Path, tmp_path: Path, method: str = "fedavg", task: str = "seq-cls"
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    cfg = tiny_run_config(model_dir, tmp_path, method=method, **{"model.task": task})
    return build_model(cfg, num_labels=2)


def _batches(tokenizer: PreTrainedTokenizerBase, task: str = "seq-cls", batch_size: int = 4) -> list[Batch]:
    table = Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 0]})
    return make_batches(table, tokenizer, task, max_length=32, batch_size=batch_size)


def _draws(seed: int, rates: tuple[float, ...], n: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [sample_active_blocks(rates, generator) for _ in range(n)]


@contextmanager
def _count_calls(model: nn.Module) -> Iterator[list[int]]:
    """Count forward calls of each block (by its original index) while the context is open."""
    calls = [0] * NUM_BLOCKS

    def hook(index: int) -> Callable[..., None]:
        def count(*_: object) -> None:
            calls[index] += 1

        return count

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(find_blocks(model)[1])]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def test_sampling_is_reproducible_per_seed() -> None:
    """The same seed gives the same sequence of active sets; another seed gives another sequence."""
    rates = (0.3, 0.5, 0.5, 0.7)
    assert _draws(7, rates, 50) == _draws(7, rates, 50)
    assert _draws(7, rates, 50) != _draws(8, rates, 50)


def test_zero_rates_keep_every_block() -> None:
    assert all(active == list(range(NUM_BLOCKS)) for active in _draws(0, (0.0,) * NUM_BLOCKS, 200))


def test_high_rates_keep_at_least_one_block() -> None:
    """Even when every block is drawn as dropped, one valid block runs, the one with the lowest rate."""
    for active in _draws(0, (0.99,) * NUM_BLOCKS, 500):
        assert active
        assert active == sorted(set(active))
        assert set(active) <= set(range(NUM_BLOCKS))
    draws = _draws(0, (0.999, 0.99, 0.999, 0.999), 200)
    assert draws.count([1]) > 150


def test_drop_frequency_matches_rates() -> None:
    rates = (0.1, 0.3, 0.5, 0.7)
    draws = _draws(123, rates, 2000)
    for block, rate in enumerate(rates):
        dropped = sum(block not in active for active in draws) / len(draws)
        assert abs(dropped - rate) < 0.05, (block, dropped, rate)


@pytest.mark.parametrize(("arch", "method", "task"), FORWARD_CASES)
def test_dropped_blocks_do_no_work(
    tiny_models: dict[str, Path], tmp_path: Path, arch: str, method: str, task: str
) -> None:
    """Inside only_blocks a dropped block is never called and gets no gradient; active ones do."""
    model, tokenizer = _build(tiny_models[arch], tmp_path, method, task)
    batch = _batches(tokenizer, task)[0]
    original = find_blocks(model)[1]
    modules = list(original)
    model.train()
    with _count_calls(model) as calls:
        with only_blocks(model, [2, 0]):
            assert LayerMap(model).num_blocks == 2
            loss = model(**batch).loss
        loss.backward()
    assert calls == [1, 0, 1, 0]
    assert torch.isfinite(loss)
    groups = LayerMap(model)
    has_grad: dict[str, set[bool]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            has_grad.setdefault(groups.group_of(name), set()).add(param.grad is not None)
    assert has_grad["block.1"] == has_grad["block.3"] == {False}
    assert has_grad["block.0"] == has_grad["block.2"] == {True}
    path, blocks = find_blocks(model)
    assert path == groups.blocks_path
    assert blocks is original
    assert all(a is b for a, b in zip(blocks, modules, strict=True))


def test_only_blocks_restores_after_an_error(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model, _ = _build(tiny_models["bert"], tmp_path)
    original = find_blocks(model)[1]
    with pytest.raises(RuntimeError, match="boom"), only_blocks(model, [1]):
        raise RuntimeError("boom")
    assert find_blocks(model)[1] is original
    assert len(original) == NUM_BLOCKS


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_drop_equals_plain_forward(tiny_models: dict[str, Path], tmp_path: Path, arch: str) -> None:
    """With drop rates 0, only_blocks over all blocks and train_plan's first loss equal the plain loss."""
    torch.manual_seed(0)
    model, tokenizer = _build(tiny_models[arch], tmp_path)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    batches = _batches(tokenizer)
    model.eval()
    with torch.no_grad():
        plain_out = model(**batches[0])
        plain = plain_out.loss
        with only_blocks(model, range(NUM_BLOCKS)):
            full = model(**batches[0]).loss
        with only_blocks(model, [0]):
            # logits, not the mean loss: a fresh head's near-zero logits can leave the loss at ln 2 anyway
            shallow = model(**batches[0]).logits
    assert torch.allclose(full, plain, atol=1e-6)
    assert not torch.allclose(shallow, plain_out.logits, atol=1e-6)
    plan = LayerPlan(
        round=1, rounds=1, train_groups=("head",), drop_rates=(0.0,) * NUM_BLOCKS, steps=1, lr=1e-2, seed=0
    )
    outcome = train_plan(model, batches, plan)
    assert outcome.metrics["mean_active_blocks"] == NUM_BLOCKS
    assert outcome.metrics["train_loss"] == pytest.approx(plain.item(), abs=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_half_depth_saves_less_activation_memory(
    tiny_models: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    """Skipped blocks keep no activations: half the blocks save clearly fewer bytes for backward."""
    model, tokenizer = _build(tiny_models[arch], tmp_path)
    batch = _batches(tokenizer)[0]
    model.train()
    full, half = ActivationMeter(model), ActivationMeter(model)
    with full.step():
        model(**batch)
    with half.step(), only_blocks(model, [0, 1]):
        model(**batch)
    assert full.peak_mb > 0
    assert half.peak_mb < 0.8 * full.peak_mb


@pytest.mark.parametrize(("arch", "task"), [("bert", "seq-cls"), ("llama", "causal-lm")])
def test_evaluation_runs_full_depth(
    tiny_models: dict[str, Path], tmp_path: Path, arch: str, task: str
) -> None:
    """After training with heavy layer dropout, evaluate still calls every block once per batch."""
    model, tokenizer = _build(tiny_models[arch], tmp_path, task=task)
    batches = _batches(tokenizer, task, batch_size=2)
    plan = LayerPlan(
        round=1, rounds=1, train_groups=("head",), drop_rates=(0.9,) * NUM_BLOCKS, steps=2, lr=1e-2, seed=0
    )
    outcome = train_plan(model, batches, plan)
    assert outcome.metrics["mean_active_blocks"] < NUM_BLOCKS
    with _count_calls(model) as calls:
        metrics = evaluate(model, batches, task)
    assert calls == [len(batches)] * NUM_BLOCKS
    assert metrics["loss"] > 0


def test_drop_rates_must_cover_every_block(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model, tokenizer = _build(tiny_models["bert"], tmp_path)
    plan = LayerPlan(round=1, rounds=1, train_groups=("head",), drop_rates=(0.0, 0.0), steps=1, seed=0)
    with pytest.raises(ValueError, match="drop"):
        train_plan(model, _batches(tokenizer), plan)


def test_drop_warmup_ramps_rates_over_the_federation() -> None:
    """Progressive dropping: no skipping at the first step, the plan's full rates from the warm-up's end."""
    plan = LayerPlan(round=1, rounds=4, train_groups=("head",), drop_rates=(0.5,), drop_warmup=0.5, steps=10)
    assert drop_scale(plan, 0, 10) == 0.0
    assert drop_scale(plan, 5, 10) == pytest.approx(0.25)  # step 5 of the 20 warm-up steps
    later = dataclasses.replace(plan, round=3)
    assert drop_scale(later, 0, 10) == 1.0
    assert drop_scale(dataclasses.replace(plan, drop_warmup=0.0), 0, 10) == 1.0


def test_drop_warmup_runs_more_blocks_early(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model, tokenizer = _build(tiny_models["bert"], tmp_path)
    batches = _batches(tokenizer)
    plan = LayerPlan(
        round=1, rounds=1, train_groups=("head",), drop_rates=(0.8,) * NUM_BLOCKS, steps=6, lr=1e-2, seed=0
    )
    abrupt = train_plan(model, batches, plan).metrics["mean_active_blocks"]
    ramped = train_plan(model, batches, dataclasses.replace(plan, drop_warmup=1.0)).metrics
    assert ramped["mean_active_blocks"] > abrupt


@pytest.mark.parametrize("shape", ["uniform", "incremental"])
@pytest.mark.parametrize("num_blocks", [1, 6, 30])
@pytest.mark.parametrize("mean_rate", [0.0, 0.1, 0.5, 0.75])
def test_rates_mean_is_exact_and_incremental_increases(shape: str, num_blocks: int, mean_rate: float) -> None:
    rates = DropConfig(mean_rate, shape).rates(num_blocks)  # type: ignore[arg-type]
    assert len(rates) == num_blocks
    assert math.isclose(sum(rates) / num_blocks, mean_rate, abs_tol=1e-9)
    assert all(0.0 <= p <= 0.95 for p in rates)
    if shape == "uniform":
        assert set(rates) == {mean_rate}
        return
    assert all(a <= b for a, b in zip(rates, rates[1:], strict=False))
    unclipped = [p for p in rates if p < 0.95]
    if mean_rate > 0:
        assert all(a < b for a, b in zip(unclipped, unclipped[1:], strict=False))


def test_incremental_follows_stochastic_depth_rule_when_unclipped() -> None:
    rates = DropConfig(0.3, "incremental").rates(6)
    assert rates == pytest.approx([0.3 * 2 * (block + 1) / 7 for block in range(6)])


def test_clipping_at_max_rate_keeps_mean_and_shape() -> None:
    # Unclipped, the deepest block would get 0.75 * 2 * 6 / 7 > 0.9.
    rates = DropConfig(0.75, "incremental").rates(6, max_rate=0.9)
    assert max(rates) == 0.9
    assert rates.count(0.9) >= 2
    assert math.isclose(sum(rates) / 6, 0.75, abs_tol=1e-9)
    free = [p for p in rates if p < 0.9]
    # The excess is spread proportionally, so the unclipped blocks keep the (l+1) shape.
    assert [p / free[0] for p in free] == pytest.approx(list(range(1, len(free) + 1)))
    assert DropConfig(0.5, "incremental").rates(4, max_rate=0.5) == (0.5, 0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("mean_rate", "num_blocks", "max_rate"),
    [(0.5, 0, 0.95), (0.5, 4, 0.4), (0.2, 4, 1.5), (0.2, 4, -0.1)],
)
def test_rates_refuse_invalid_inputs(mean_rate: float, num_blocks: int, max_rate: float) -> None:
    with pytest.raises(ValueError):
        DropConfig(mean_rate, "incremental").rates(num_blocks, max_rate=max_rate)


@pytest.mark.parametrize(
    ("mean_rate", "shape"), [(1.0, "uniform"), (-0.1, "uniform"), (math.nan, "uniform"), (0.1, "linear")]
)
def test_dropconfig_refuses_invalid_fields(mean_rate: float, shape: str) -> None:
    with pytest.raises(ValueError):
        DropConfig(mean_rate, shape)  # type: ignore[arg-type]


def test_label_round_trip() -> None:
    assert DropConfig(0.3, "incremental").label == "p0.30-incremental"
    configs = [
        DropConfig(0.0, "uniform"),
        DropConfig(0.6, "incremental"),
        DropConfig(0.125, "uniform"),
        DropConfig(1e-5, "incremental"),
        DropConfig(0.1 + 0.2, "uniform"),
    ]
    for config in configs:
        assert DropConfig.from_label(config.label) == config
    for bad in ["0.30-uniform", "p0.30", "px-uniform", "p0.30-linear", "p1.00-uniform"]:
        with pytest.raises(ValueError):
            DropConfig.from_label(bad)


def test_spread_rate_keeps_the_mean_caps_and_stays_proportional() -> None:
    weights = [0.02, 1.0, 1.0, 0.5, 1.0, 0.1]
    rates = spread_rate(0.3, weights, max_rate=0.95)
    assert math.isclose(sum(rates) / 6, 0.3, abs_tol=1e-12)
    assert [r / rates[1] for r in rates] == pytest.approx(weights)
    capped = spread_rate(0.6, [0.01, 1.0, 1.0, 1.0], max_rate=0.7)
    assert capped[1:] == (0.7, 0.7, 0.7) and math.isclose(sum(capped) / 4, 0.6, abs_tol=1e-12)
    assert capped[0] == pytest.approx(0.6 * 4 - 2.1)
    for bad in ([0.0, 0.0], [1.0, -1.0], [1.0, math.inf]):
        with pytest.raises(ValueError, match="weights"):
            spread_rate(0.3, bad, max_rate=0.95)


def test_sensitivity_shape_spares_the_blocks_the_model_needs() -> None:
    """Measured on SmolLM2 (benchmarks/results/stld_shapes.md): blocks 0 and 3 matter far more here."""
    scores = [2.7, 0.2, 0.1, 2.0, 0.15, 0.3]
    weights = sensitivity_weights(scores)
    # median 0.25: blocks 0 and 3 lie above twice the median and are protected; block 5 is 1.2x it
    assert protected_blocks(scores) == [0, 3]
    assert protected_blocks(scores, protect_factor=1.1) == [0, 3, 5]
    assert weights == pytest.approx([0.0, 1.0, 1.0, 0.0, 1.0, 0.25 / 0.3])
    rates = DropConfig(0.3, "sensitivity").rates(6, sensitivity=scores)
    assert math.isclose(sum(rates) / 6, 0.3, abs_tol=1e-12)
    assert rates[0] == rates[3] == 0.0 < rates[5] < min(rates[1], rates[2], rates[4])
    assert DropConfig.from_label(DropConfig(0.3, "sensitivity").label).shape == "sensitivity"
    with pytest.raises(ValueError, match="one sensitivity per block"):
        DropConfig(0.3, "sensitivity").rates(6)
    with pytest.raises(ValueError, match="one sensitivity per block"):
        DropConfig(0.3, "sensitivity").rates(6, sensitivity=scores[:5])


@pytest.mark.parametrize(
    ("drop", "speed", "target", "expected"),
    [
        (DropConfig(0.0, "uniform"), 0.25, 0.5, DropConfig(0.5, "uniform")),  # twice too slow: half
        (DropConfig(0.0, "uniform"), 0.5, 0.5, DropConfig(0.0, "uniform")),  # at the target: as planned
        (DropConfig(0.15, "incremental"), 1.0, 0.5, DropConfig(0.15, "incremental")),
        (DropConfig(0.15, "sensitivity"), 0.25, 0.5, DropConfig(0.5, "sensitivity")),  # the arm's shape
        (DropConfig(0.6, "incremental"), 0.25, 0.5, DropConfig(0.6, "incremental")),  # already faster
        (DropConfig(0.0, "uniform"), 0.01, 1.0, DropConfig(MAX_MATCHED_RATE, "uniform")),  # steps still train
        (DropConfig(0.15, "incremental"), 0.25, 0.0, DropConfig(0.15, "incremental")),  # off
    ],
)
def test_speed_matched_rates_bring_slow_devices_to_the_target(
    drop: DropConfig, speed: float, target: float, expected: DropConfig
) -> None:
    assert speed_matched(drop, speed, target) == expected
