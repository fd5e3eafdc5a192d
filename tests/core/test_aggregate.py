"""Layer-wise aggregation, update validation, and the local training loop that produces updates.

Each parameter is averaged over exactly the clients that uploaded it (example-weighted), untouched
parameters stay the same tensor, malformed replies are refused before aggregation, and a client trains
exactly the groups of its plan and reports new minus old for exactly those parameters.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from fedcore.core.aggregate import ClientUpdate, UpdateRejected, aggregate_layerwise, combine, validate_update
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
        weight=10,
        update={"shared": torch.tensor([4.0, 8.0, -4.0]), "only_a": torch.tensor([1.0, 2.0])},
    )
    b = ClientUpdate(
        node_id=2,
        weight=30,
        update={"shared": torch.tensor([0.0, -4.0, 4.0]), "b_and_c": torch.tensor([3.0])},
    )
    c = ClientUpdate(node_id=3, weight=60, update={"b_and_c": torch.tensor([-3.0])})
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
        fedavg = old[name] + sum(u.update[name] * (u.weight / total) for u in updates)
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


F32 = torch.float32

REJECTED: dict[str, tuple[dict[str, torch.Tensor], torch.dtype, str]] = {
    "nan": (_with("block.0.weight", torch.tensor([[0.0, math.nan], [0.0, 0.0]])), F32, "block.0.weight.*NaN"),
    "inf": (_with("head.weight", torch.tensor([0.0, math.inf, 0.0])), F32, "head.weight.*Inf"),
    "unexpected key": ({**_full_update(), "block.9.weight": torch.zeros(2)}, F32, "unexpected.*block.9"),
    "wrong shape": (_with("block.0.bias", torch.zeros(3)), F32, r"block.0.bias.*shape \(3,\)"),
    "int64 dtype": (_with("block.0.bias", torch.zeros(2, dtype=torch.int64)), F32, "dtype torch.int64"),
    "int32 dtype": (_with("block.0.bias", torch.zeros(2, dtype=torch.int32)), F32, "dtype torch.int32"),
    "bool dtype": (_with("head.weight", torch.ones(3, dtype=torch.bool)), F32, "dtype torch.bool"),
    "float64 for float32": (_with("head.weight", torch.zeros(3, dtype=torch.float64)), F32, "float64"),
    "float16 for float32": (_with("head.weight", torch.zeros(3, dtype=torch.float16)), F32, "float16"),
    "float32 for float16": (
        {k: v.half() for k, v in _with("head.weight", torch.zeros(3)).items() if k != "head.weight"}
        | {"head.weight": torch.zeros(3)},
        torch.float16,
        "head.weight: dtype torch.float32",
    ),
    "partial group": (_without("block.0.bias"), F32, "in part.*block.0"),
    "empty": ({}, F32, "empty"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_validate_rejects_with_the_cause(case: str) -> None:
    update, dtype, cause = REJECTED[case]
    with pytest.raises(UpdateRejected, match=cause):
        validate_update(update, EXPECTED, _group_of, dtype)


@pytest.mark.parametrize(
    "update",
    [_full_update(), _without("block.1.weight"), _without("block.0.weight", "block.0.bias", "head.weight")],
    ids=["full", "personal block.1", "only block.1"],
)
def test_validate_accepts_whole_groups_in_the_wire_dtype(update: dict[str, torch.Tensor]) -> None:
    """A complete update, or one omitting whole groups (personal layers), passes in fp32 and, for a
    round.wire-dtype=float16 run, in fp16."""
    validate_update(update, EXPECTED, _group_of, torch.float32)
    validate_update({k: v.half() for k, v in update.items()}, EXPECTED, _group_of, torch.float16)


# ------------------------------------------------------------------------------------------ robust combiners


def test_median_and_trimmed_mean_per_coordinate_ignore_one_outlier() -> None:
    """Hand-computed: the outlier's coordinates never reach the median or the trimmed mean."""
    deltas = [
        torch.tensor([1.0, -2.0]),
        torch.tensor([2.0, -1.0]),
        torch.tensor([3.0, 0.0]),
        torch.tensor([1e30, -1e30]),
    ]
    weights = [1.0, 1.0, 1.0, 1e6]
    # median of 4: mean of the middle two; trimmed mean of 4 drops one at each end: the same here
    assert torch.equal(combine(deltas, weights, "median"), torch.tensor([2.5, -1.5], dtype=torch.float64))
    assert torch.equal(
        combine(deltas, weights, "trimmed-mean"), torch.tensor([2.5, -1.5], dtype=torch.float64)
    )
    assert torch.equal(
        combine(deltas[:3], weights[:3], "median"), torch.tensor([2.0, -1.0], dtype=torch.float64)
    )
    five = [*deltas, torch.tensor([4.0, 1.0])]
    assert torch.equal(
        combine(five, [1.0] * 5, "trimmed-mean"), torch.tensor([3.0, -1.0], dtype=torch.float64)
    )
    assert combine(deltas, weights, "mean")[0] > 1e29


def test_two_contributors_trimmed_mean_is_their_mean() -> None:
    """Nothing can be trimmed from two values: the trimmed mean is the unweighted mean, as the median is."""
    deltas = [torch.tensor([1.0]), torch.tensor([3.0])]
    assert combine(deltas, [1.0, 9.0], "trimmed-mean").item() == 2.0
    assert combine(deltas, [1.0, 9.0], "median").item() == 2.0


def test_robust_aggregators_work_per_parameter_over_its_contributors() -> None:
    old = {"shared": torch.zeros(1), "only_a": torch.zeros(1)}
    updates = [
        ClientUpdate(1, 1, {"shared": torch.tensor([1.0]), "only_a": torch.tensor([5.0])}),
        ClientUpdate(2, 1, {"shared": torch.tensor([2.0])}),
        ClientUpdate(3, 1, {"shared": torch.tensor([900.0])}),
    ]
    new = aggregate_layerwise(old, updates, "median")
    assert new["shared"].item() == 2.0 and new["only_a"].item() == 5.0


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
