"""Block removal sensitivity: how far the model's output moves when one block is skipped (project's own).

Layer dropout on a pretrained model also skips blocks the model cannot do without. Measured on
SmolLM2-135M (``benchmarks/results/stld_shapes.md``): removing block 0 alone raises the LM loss on proxy
text from 6.2 to 13.0, block 1 or 11 to 9.5, block 29 to 8.5, while 24 of its 30 blocks cost less than
0.5. A training step that drops block 0 trains the adapters on a broken network. The ``sensitivity``
drop shape therefore spreads a mean drop rate by this measure, which the server computes once on
unlabelled proxy text: the normalised error (squared error over each dimension's variance, as for LEFF's
students) of the model's last hidden state when block ``l`` alone is skipped. It needs no labels, so it
works for a classifier with a fresh head as well as for a language model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedcore.batching import Batch
from fedcore.distill import _feature_variance, _masked_mse
from fedcore.layers import find_blocks
from fedcore.stld import only_blocks


def _last_hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs, output_hidden_states=True).hidden_states[-1].float()


def block_sensitivity(model: nn.Module, batches: Sequence[Batch]) -> list[float]:
    """Per block, the normalised error of the last hidden state with that block skipped (0 = no effect).

    The model is left as found: eval mode is restored to what it was, no parameter is touched.
    """
    num_blocks = len(find_blocks(model)[1])
    device = next(model.parameters()).device
    inputs = [{k: v.to(device) for k, v in b.items() if k != "labels"} for b in batches]
    masks = [i.get("attention_mask") for i in inputs]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = [_last_hidden(model, i) for i in inputs]
            variance = _feature_variance(reference, masks)
            scores = []
            for skipped in range(num_blocks):
                with only_blocks(model, [b for b in range(num_blocks) if b != skipped]):
                    errors = [
                        _masked_mse(_last_hidden(model, i), ref, m, variance).item()
                        for i, ref, m in zip(inputs, reference, masks, strict=True)
                    ]
                scores.append(sum(errors) / len(errors))
    finally:
        model.train(was_training)
    return scores


def sensitivity_weights(scores: Sequence[float]) -> list[float]:
    """min(1, median / score) per block: a typical block weighs 1, one that matters k times more than the
    median weighs 1/k, so the drop rate it receives shrinks in proportion."""
    ordered = sorted(scores)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return [1.0 if score <= median else median / score for score in scores]


def spread_rate(mean_rate: float, weights: Sequence[float], max_rate: float) -> tuple[float, ...]:
    """Per-block rates proportional to ``weights``, none above ``max_rate``, with mean exactly ``mean_rate``.

    Water-filling: blocks whose share would exceed ``max_rate`` are clipped to it and the rest of the total
    is spread over the others in proportion to their weights, again until nothing exceeds the cap.
    """
    if any(w < 0 or not math.isfinite(w) for w in weights) or not any(weights):
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    total = mean_rate * len(weights)
    clipped: set[int] = set()
    while True:
        free = [i for i in range(len(weights)) if i not in clipped]
        weight = sum(weights[i] for i in free)
        scale = (total - max_rate * len(clipped)) / weight if weight else 0.0
        over = {i for i in free if scale * weights[i] > max_rate}
        if not over:
            return tuple(max_rate if i in clipped else scale * weights[i] for i in range(len(weights)))
        clipped |= over
