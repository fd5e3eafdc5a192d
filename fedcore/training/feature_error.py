"""Errors between hidden states that every dimension counts in (LEFF's students, block sensitivity).

Transformer hidden states carry a few dimensions with huge magnitudes that dominate a plain mean squared
error. Dividing each dimension's squared error by that dimension's variance in the reference states gives a
normalised error: the share of the reference's variance a prediction does not reproduce (0 exact, 1 no
better than predicting each dimension's mean), comparable across models and layers. This project's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def feature_variance(outputs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Variance of every hidden dimension over the real tokens of all proxy batches, floored at 1% of the
    mean variance: a nearly constant dimension must not weigh thousands of times more than a typical one."""
    tokens = torch.cat(
        [
            out.float().reshape(-1, out.shape[-1])[m.reshape(-1).bool()]
            if m is not None
            else out.float().reshape(-1, out.shape[-1])
            for out, m in zip(outputs, masks, strict=True)
        ]
    )
    variance = tokens.var(dim=0, unbiased=False)
    return variance.clamp_min(1e-2 * float(variance.mean()) + 1e-12)


def masked_mse(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over real tokens only (padding carries no signal), each dimension divided by
    ``scale`` when given."""
    error = (student.float() - teacher.float()).pow(2)
    error = (error / scale if scale is not None else error).mean(dim=-1)
    if mask is None:
        return error.mean()
    weights = mask.to(error.dtype)
    return (error * weights).sum() / weights.sum().clamp_min(1.0)
