"""Server optimisers on a round's aggregated deltas: FedAvg's step and per-parameter FedAdam."""

from __future__ import annotations

import pytest
import torch

from fedcore.core.aggregate import ClientUpdate, aggregate_deltas, aggregate_layerwise
from fedcore.core.server_optimizer import FedAdam, MeanDelta


def test_mean_delta_is_layerwise_fedavg_bit_for_bit() -> None:
    old = {"a": torch.randn(4), "b": torch.randn(3)}
    updates = [ClientUpdate(1, 3, {"a": torch.randn(4)}), ClientUpdate(2, 5, {"a": torch.randn(4)})]
    new = MeanDelta().step(old, aggregate_deltas(updates))
    assert torch.equal(new["a"], aggregate_layerwise(old, updates)["a"])
    assert new["b"] is old["b"]


def test_fedadam_first_step_is_lr_times_the_deltas_sign() -> None:
    optimizer = FedAdam(lr=0.1, tau=1e-9)
    old = {"a": torch.zeros(3), "b": torch.ones(2)}
    new = optimizer.step(old, {"a": torch.tensor([2.0, -0.5, 1e-3], dtype=torch.float64)})
    assert torch.allclose(new["a"], torch.tensor([0.1, -0.1, 0.1]), atol=1e-6)
    assert new["b"] is old["b"], "a parameter nobody updated keeps its tensor"
    assert set(optimizer.moments) == {"a"}, "moments exist only for updated parameters"


def test_fedadam_counts_each_parameters_own_updates() -> None:
    optimizer = FedAdam(lr=0.1)
    state = {"a": torch.zeros(1), "b": torch.zeros(1)}
    delta = torch.ones(1, dtype=torch.float64)
    state = optimizer.step(state, {"a": delta})
    state = optimizer.step(state, {"a": delta, "b": delta})
    assert optimizer.moments["a"][2] == 2 and optimizer.moments["b"][2] == 1
    # b's first update is bias-corrected as a first update, whatever the round
    assert torch.allclose(state["b"], torch.tensor([0.1]), atol=1e-3)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"tau": 0.0}, {"beta_1": 1.0}, {"beta_2": -0.1}])
def test_fedadam_refuses_settings_outside_their_range(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="FedAdam needs"):
        FedAdam(**bad)


def rounds_of_deltas(count: int) -> list[dict[str, torch.Tensor]]:
    """Partial rounds: every round updates 'a', odd rounds also 'b', and 'c' never."""
    generator = torch.Generator().manual_seed(0)
    rounds = []
    for number in range(count):
        names = ["a", "b"] if number % 2 else ["a"]
        rounds.append({n: torch.randn(3, generator=generator, dtype=torch.float64) for n in names})
    return rounds


@pytest.mark.parametrize("stop", [1, 2, 3])
def test_fedadam_continued_from_its_state_dict_equals_an_uninterrupted_run(stop: int) -> None:
    start = {"a": torch.zeros(3), "b": torch.ones(3), "c": torch.ones(3)}
    rounds = rounds_of_deltas(5)
    uninterrupted, state = FedAdam(lr=0.05), start
    for deltas in rounds:
        state = uninterrupted.step(state, deltas)

    first, resumed = FedAdam(lr=0.05), start
    for deltas in rounds[:stop]:
        resumed = first.step(resumed, deltas)
    saved = {name: tensor.clone() for name, tensor in first.state_dict().items()}
    second = FedAdam(lr=0.05)
    second.load_state_dict(saved)
    for deltas in rounds[stop:]:
        resumed = second.step(resumed, deltas)

    assert all(torch.equal(resumed[name], state[name]) for name in start)
    assert second.state_dict().keys() == uninterrupted.state_dict().keys()
    assert all(torch.equal(second.state_dict()[k], v) for k, v in uninterrupted.state_dict().items())


def test_fedadams_state_dict_holds_moments_and_counts_of_updated_parameters_only() -> None:
    optimizer = FedAdam()
    optimizer.step({"a": torch.zeros(2), "b": torch.zeros(2)}, {"a": torch.ones(2, dtype=torch.float64)})
    state = optimizer.state_dict()
    assert set(state) == {"first/a", "second/a", "count/a"}
    assert state["count/a"].item() == 1 and state["first/a"].dtype == torch.float64


@pytest.mark.parametrize(
    "state",
    [
        {"first/a": torch.zeros(2), "second/a": torch.zeros(2)},
        {"first/a": torch.zeros(2), "second/a": torch.zeros(3), "count/a": torch.tensor(1)},
        {"first/a": torch.zeros(2), "second/a": torch.zeros(2), "count/a": torch.tensor(0)},
        {"moment/a": torch.zeros(2)},
    ],
    ids=["no-count", "shapes-differ", "count-0", "unknown-key"],
)
def test_fedadam_refuses_a_state_it_cannot_have_made(state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="FedAdam's state"):
        FedAdam().load_state_dict(state)


def test_mean_delta_keeps_no_state_and_refuses_one() -> None:
    assert MeanDelta().state_dict() == {}
    MeanDelta().load_state_dict({})
    with pytest.raises(ValueError, match="MeanDelta keeps no state"):
        MeanDelta().load_state_dict({"first/a": torch.zeros(2)})
