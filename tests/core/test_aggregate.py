"""Layer-wise aggregation, update validation, and the local training loop that produces updates.

Each parameter is averaged over exactly the clients that uploaded it (example-weighted), untouched
parameters stay the same tensor, malformed replies are refused before aggregation, and a client trains
exactly the groups of its plan and reports new minus old for exactly those parameters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset

from fedcore.core.aggregate import ClientUpdate, UpdateRejected, aggregate_layerwise, validate_update
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.data.batching import make_batches
from fedcore.model import build_model, tunable_names
from fedcore.training.train import learning_rate, train_plan
from tests.conftest import tiny_run_config

# ---------------------------------------------------------------------------------------------- aggregate


def test_weighted_mean_renormalised_per_parameter() -> None:
    """Hand-computed: weights are example counts renormalised over each parameter's contributors."""
    old = {
        "shared": torch.tensor([1.0, 2.0, 3.0]),
        "only_a": torch.tensor([0.5, -0.5]),
        "b_and_c": torch.tensor([10.0]),
    }
    a = ClientUpdate(
        node_id=1,
        examples=10,
        update={"shared": torch.tensor([4.0, 8.0, -4.0]), "only_a": torch.tensor([1.0, 2.0])},
    )
    b = ClientUpdate(
        node_id=2,
        examples=30,
        update={"shared": torch.tensor([0.0, -4.0, 4.0]), "b_and_c": torch.tensor([3.0])},
    )
    c = ClientUpdate(node_id=3, examples=60, update={"b_and_c": torch.tensor([-3.0])})
    new = aggregate_layerwise(old, [a, b, c])
    # shared: 0.25 * a + 0.75 * b; b_and_c: 1/3 * b + 2/3 * c (client a's examples do not count there)
    assert torch.equal(new["shared"], torch.tensor([2.0, 1.0, 5.0]))
    assert torch.equal(new["b_and_c"], torch.tensor([9.0]))
    assert torch.equal(new["only_a"], torch.tensor([1.5, 1.5]))
    assert all(t.dtype == torch.float32 for t in new.values())


def test_single_contributor_gets_its_own_delta() -> None:
    old = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0))}
    delta = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    new = aggregate_layerwise(old, [ClientUpdate(1, 7, {"w": delta}), ClientUpdate(2, 50, {})])
    assert torch.allclose(new["w"], old["w"] + delta, atol=0, rtol=1e-6)


def test_parameter_nobody_uploaded_is_the_same_object() -> None:
    """Frozen and personal parameters keep their exact tensor; the old state itself is not modified."""
    old = {"trained": torch.zeros(2), "frozen": torch.randn(5)}
    frozen_copy = old["frozen"].clone()
    new = aggregate_layerwise(old, [ClientUpdate(1, 10, {"trained": torch.ones(2)})])
    assert new["frozen"] is old["frozen"]
    assert torch.equal(new["frozen"], frozen_copy)
    assert torch.equal(old["trained"], torch.zeros(2))
    assert new.keys() == old.keys()


def test_fedavg_is_the_special_case_of_full_uploads() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = {"embed.w": (6, 4), "block.0.w": (4, 4), "head.b": (2,)}
    old = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    examples = [5, 20, 75]
    updates = [
        ClientUpdate(i, n, {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()})
        for i, n in enumerate(examples)
    ]
    new = aggregate_layerwise(old, updates)
    total = sum(examples)
    for name in shapes:
        fedavg = old[name] + sum(u.update[name] * (u.examples / total) for u in updates)
        assert torch.allclose(new[name], fedavg, atol=1e-6)


# ------------------------------------------------------------------------------------------------ validate

EXPECTED = {
    "block.0.weight": torch.Size([2, 2]),
    "block.0.bias": torch.Size([2]),
    "block.1.weight": torch.Size([2, 2]),
    "head.weight": torch.Size([3]),
}


def _group_of(name: str) -> str:
    return name.rpartition(".")[0]


def _full_update() -> dict[str, torch.Tensor]:
    return {name: torch.full(shape, 0.1) for name, shape in EXPECTED.items()}


def _with(name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    update = _full_update()
    update[name] = value
    return update


def _without(*names: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in _full_update().items() if k not in names}


REJECTED: dict[str, tuple[dict[str, torch.Tensor], Any, dict[str, float], str]] = {
    "nan": (
        _with("block.0.weight", torch.tensor([[0.0, math.nan], [0.0, 0.0]])),
        10,
        {},
        "block.0.weight.*NaN",
    ),
    "inf": (_with("head.weight", torch.tensor([0.0, math.inf, 0.0])), 10, {}, "head.weight.*Inf"),
    "unexpected key": ({**_full_update(), "block.9.weight": torch.zeros(2)}, 10, {}, "unexpected.*block.9"),
    "wrong shape": (_with("block.0.bias", torch.zeros(3)), 10, {}, r"block.0.bias.*shape \(3,\)"),
    "integer dtype": (_with("block.0.bias", torch.zeros(2, dtype=torch.int64)), 10, {}, "dtype.*int64"),
    "bool dtype": (_with("head.weight", torch.ones(3, dtype=torch.bool)), 10, {}, "not floating point"),
    "zero examples": (_full_update(), 0, {}, "example count"),
    "negative examples": (_full_update(), -5, {}, "example count"),
    "nan examples": (_full_update(), math.nan, {}, "example count"),
    "infinite examples": (_full_update(), math.inf, {}, "example count"),
    "string examples": (_full_update(), "10", {}, "example count"),
    "absurd examples": (_full_update(), 10**12, {}, "absurd example count"),
    "partial group": (_without("block.0.bias"), 10, {}, "in part.*block.0"),
    "empty": ({}, 10, {}, "empty"),
    "norm above bound": (_full_update(), 10, {"max_norm": 0.1}, "norm.*exceeds"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_validate_rejects_with_the_cause(case: str) -> None:
    update, examples, options, cause = REJECTED[case]
    with pytest.raises(UpdateRejected, match=cause):
        validate_update(update, examples, EXPECTED, _group_of, **options)


@pytest.mark.parametrize(
    "update",
    [_full_update(), _without("block.1.weight"), _without("block.0.weight", "block.0.bias", "head.weight")],
    ids=["full", "personal block.1", "only block.1"],
)
def test_validate_accepts_whole_groups(update: dict[str, torch.Tensor]) -> None:
    """A complete update, or one omitting whole groups (personal layers), passes, also under a norm bound."""
    validate_update(update, 10, EXPECTED, _group_of)
    validate_update(update, 10, EXPECTED, _group_of, max_norm=1.0)


# --------------------------------------------------------------------------------------------- train_plan

TEXTS = [
    "good film",
    "awful boring plot and bad acting",
    "the best movie with great acting",
    "a dull story",
    "fun and fresh",
    "the worst film",
    "i love this movie",
    "rotten and boring",
]


def test_train_plan_changes_only_planned_groups(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """block.1 and head move; every other parameter is bit-identical; the update is exactly new - old."""
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="fedavg")
    model, tokenizer = build_model(cfg, num_labels=2)
    table = Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 0, 1, 0, 1, 0]})
    batches = make_batches(table, tokenizer, "seq-cls", max_length=32, batch_size=4)
    plan = LayerPlan(round=1, rounds=1, train_groups=("block.1", "head"), steps=2, lr=1e-2, seed=0)
    layer_map = LayerMap(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    outcome = train_plan(model, batches, plan)

    after = {name: p.detach() for name, p in model.named_parameters()}
    planned = {n for n in before if layer_map.group_of(n) in plan.train_groups}
    assert {layer_map.group_of(n) for n in before.keys() - planned} == {
        "embed",
        "block.0",
        "block.2",
        "block.3",
    }
    for name in before:
        assert torch.equal(after[name], before[name]) == (name not in planned), name
    assert set(outcome.update) == planned & set(tunable_names(model))
    for name, delta in outcome.update.items():
        assert torch.equal(delta, after[name] - before[name]), name
    assert outcome.metrics["steps"] == 2


@pytest.mark.parametrize(("steps", "rounds"), [(2, 1), (15, 3)], ids=["brief plan", "defaults"])
def test_learning_rate_never_exceeds_the_peak(steps: int, rounds: int) -> None:
    for round_ in range(1, rounds + 1):
        plan = LayerPlan(round=round_, rounds=rounds, train_groups=("head",), steps=steps, lr=1e-2)
        for step in range(steps):
            assert 0 < learning_rate(plan, step, steps, warmup_fraction=0.1) <= plan.lr
