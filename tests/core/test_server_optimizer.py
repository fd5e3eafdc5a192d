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
