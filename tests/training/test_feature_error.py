"""The normalised error between hidden states: every dimension counts by its own variance."""

from __future__ import annotations

import pytest
import torch

from fedcore.training.feature_error import feature_variance, masked_mse


def test_normalised_error_weighs_every_dimension_by_its_variance() -> None:
    """Predicting each dimension's mean scores 1 whatever the dimension's scale; plain MSE is dominated by
    the largest dimension, the normalised error is not."""
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 5, 3, generator=generator) * torch.tensor([10.0, 3.0, 1.0])
    mask = torch.ones(4, 5)
    mask[0, 3:] = 0
    variance = feature_variance([teacher], [mask])
    real = teacher[mask.bool()]
    mean = real.mean(dim=0).expand_as(teacher)
    assert masked_mse(mean, teacher, mask, variance).item() == pytest.approx(1.0, rel=1e-4)
    off_small = teacher.clone()
    off_small[..., 2] = mean[..., 2]  # wrong only on the tiny dimension
    assert masked_mse(off_small, teacher, mask, variance).item() == pytest.approx(1 / 3, rel=1e-4)
    assert masked_mse(off_small, teacher, mask).item() < 0.02 * masked_mse(mean, teacher, mask).item()
