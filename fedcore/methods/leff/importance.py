"""LEFF block importance and per-client window sampling (server side).

From the paper: block l scores I_l = sum over its weights of (g * theta)^2 (first-order Taylor estimate of
the loss change when a weight is zeroed), each contiguous window of a client's capacity is scored by the sum
of its blocks, and one window per client is sampled from a softmax over window scores.

Our choices where the paper is silent (paper-inspired, not the paper's):
- g is the gradient of the MEAN loss over the given batches, computed with dropout off, so importance is a
  deterministic function of the weights and the data.
- Unlabelled proxy text on a classifier has no task loss; we use the mean entropy of the predicted class
  distribution instead (a label-free signal of how much each block moves the prediction). Unlabelled text
  on a causal LM uses the LM loss on the text itself (padding masked).
- Window scores are divided by their maximum before the temperature softmax, so the temperature means the
  same thing whatever the scale of the gradients (which varies by orders of magnitude across models/data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedcore.core.layers import LayerMap
from fedcore.data.batching import Batch, to_device
from fedcore.model import training_state_kept

STRATEGIES = ("importance", "random", "round-robin", "least-trained")
#: the window policies that read block importance (least-trained breaks its ties by it); for the others
#: the server skips the importance pass, a forward and backward pass of the whole model every round
READS_IMPORTANCE = ("importance", "least-trained")


def _loss(model: nn.Module, batch: Batch, task: str) -> torch.Tensor:
    """The task loss when the batch has labels, else a label-free substitute (see module docstring)."""
    if "labels" in batch:
        return model(**batch).loss
    if task == "causal-lm":
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return model(**batch, labels=labels).loss
    logits = model(**batch).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()


def block_importance(model: nn.Module, batches: Sequence[Batch], task: str) -> list[float]:
    """I_l = sum over every parameter of block l of (grad * theta)^2, from one pass over the batches.

    Every block parameter gets a gradient whatever its requires_grad flag (importance is about the blocks,
    not about what the current tuning trains); all other parameters are frozen for the pass so no work is
    spent on them. The model is left as found: requires_grad flags, .grad tensors and train/eval modes.
    """
    if not batches:
        raise ValueError("block_importance needs at least one batch")
    layer_map = LayerMap(model)
    named = list(model.named_parameters())
    saved_grads = [p.grad for _, p in named]
    block_params: list[list[nn.Parameter]] = [[] for _ in range(layer_map.num_blocks)]
    for name, param in named:
        block = layer_map.block_index(name)
        if block is not None:
            block_params[block].append(param)
    device = named[0][1].device
    with training_state_kept(model):
        try:
            model.eval()
            for name, param in named:
                param.grad = None
                param.requires_grad_(layer_map.block_index(name) is not None)
            with torch.enable_grad():
                for batch in batches:
                    inputs = to_device(batch, device)
                    (_loss(model, inputs, task) / len(batches)).backward()
            with torch.no_grad():
                return [
                    float(sum(((p.grad * p).double() ** 2).sum() for p in params if p.grad is not None))
                    for params in block_params
                ]
        finally:
            for (_, param), grad in zip(named, saved_grads, strict=True):
                param.grad = grad


def window_scores(importance: Sequence[float], width: int) -> list[float]:
    """Score of the window starting at block s = sum of importance[s : s + width]."""
    num_blocks = len(importance)
    if not 1 <= width <= num_blocks:
        raise ValueError(f"window width must be in 1..{num_blocks}, got {width}")
    return [float(sum(importance[s : s + width])) for s in range(num_blocks - width + 1)]


def window_probabilities(scores: Sequence[float], temperature: float) -> list[float]:
    """Softmax of scores / max(|scores|) / temperature: scale-free, so one temperature fits any model.

    Lower temperature concentrates the mass on the best windows; all-zero scores give a uniform draw.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    values = np.asarray(scores, dtype=np.float64)
    scale = np.abs(values).max() if values.size else 0.0
    logits = (values / scale if scale > 0 else np.zeros_like(values)) / temperature
    weights = np.exp(logits - logits.max())
    return (weights / weights.sum()).tolist()


def choose_window(
    strategy: str,
    importance: Sequence[float],
    width: int,
    rng: np.random.Generator,
    round_number: int,
    client_index: int,
    temperature: float,
    trained: Sequence[int] = (),
) -> int:
    """Start block of the window one client trains this round.

    "importance" samples from window_probabilities (the paper's method), "random" draws uniformly and
    "round-robin" tiles the depth, one window width further per round and per client, so every block
    is trained within ceil(L / width) steps (the paper's ablation baselines).
    "least-trained" (this project's policy) takes the window whose blocks clients have trained least
    often so far (``trained``: a count per block), ties broken by window score, then by the lower start.
    A draw over window starts trains the blocks at either end of the model up to ``width`` times less
    often than the middle ones, and the top blocks feed the task head; this policy evens that out
    whatever the clients' window widths.
    """
    scores = window_scores(importance, width)
    if strategy == "importance":
        return int(rng.choice(len(scores), p=window_probabilities(scores, temperature)))
    if strategy == "random":
        return int(rng.integers(len(scores)))
    if strategy == "round-robin":
        num_blocks = len(importance)
        return min((round_number - 1 + client_index) * width % num_blocks, num_blocks - width)
    if strategy == "least-trained":
        counts = list(trained) or [0] * len(importance)
        if len(counts) != len(importance):
            raise ValueError(f"trained counts {len(counts)} blocks, importance {len(importance)}")
        return min(range(len(scores)), key=lambda s: (sum(counts[s : s + width]), -scores[s], s))
    raise ValueError(f"unknown window strategy '{strategy}'; allowed: {', '.join(STRATEGIES)}")
