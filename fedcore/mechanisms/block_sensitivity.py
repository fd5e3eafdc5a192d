"""Block removal sensitivity: how far the model's output moves when one block is skipped (project's own).

Layer dropout on a pretrained model also skips blocks the model cannot do without: a pretrained decoder
leans on a few of its blocks, and a training step that drops one of them trains the adapters on a broken
network (``docs/research/layer-dropout-per-step-cost.md``). The ``sensitivity``
drop shape therefore spreads a mean drop rate by this measure, which the server computes once on
unlabelled proxy text: the normalised error (squared error over each dimension's variance, as for LEFF's
students) of the model's last hidden state when block ``l`` alone is skipped. It needs no labels, so it
works for a classifier with a fresh head as well as for a language model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedcore.core.layers import find_blocks
from fedcore.data.batching import Batch, to_device
from fedcore.mechanisms.layer_dropout import only_blocks
from fedcore.training.feature_error import feature_variance, masked_mse


def _last_hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs, output_hidden_states=True).hidden_states[-1].float()


def block_sensitivity(model: nn.Module, batches: Sequence[Batch]) -> list[float]:
    """Per block, the normalised error of the last hidden state with that block skipped (0 = no effect).

    The model is left as found: eval mode is restored to what it was, no parameter is touched.
    """
    num_blocks = len(find_blocks(model)[1])
    device = next(model.parameters()).device
    inputs = [to_device(b, device, labels=False) for b in batches]
    masks = [i.get("attention_mask") for i in inputs]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = [_last_hidden(model, i) for i in inputs]
            variance = feature_variance(reference, masks)
            scores = []
            for skipped in range(num_blocks):
                with only_blocks(model, [b for b in range(num_blocks) if b != skipped]):
                    errors = [
                        masked_mse(_last_hidden(model, i), ref, m, variance).item()
                        for i, ref, m in zip(inputs, reference, masks, strict=True)
                    ]
                scores.append(sum(errors) / len(errors))
    finally:
        model.train(was_training)
    return scores
