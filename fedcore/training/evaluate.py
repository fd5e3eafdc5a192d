"""Task metrics on held-out batches: accuracy, macro-F1 and loss for classification, perplexity for LM."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedcore.data.batching import Batch, to_device


def macro_f1(predictions: list[int], labels: list[int]) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    classes = sorted(set(labels) | set(predictions))
    scores = []
    for c in classes:
        tp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels, strict=True) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], task: str, device: torch.device | None = None) -> dict:
    """Full-depth evaluation; loss is the example-weighted (classification) or token-weighted (LM) mean."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    if task == "seq-cls":
        predictions: list[int] = []
        labels: list[int] = []
        loss_sum = 0.0
        for batch in batches:
            batch = to_device(batch, device)
            out = model(**batch)
            loss_sum += out.loss.item() * len(batch["labels"])
            predictions += out.logits.argmax(-1).tolist()
            labels += batch["labels"].tolist()
        n = max(len(labels), 1)
        accuracy = sum(p == y for p, y in zip(predictions, labels, strict=True)) / n
        return {"accuracy": accuracy, "macro_f1": macro_f1(predictions, labels), "loss": loss_sum / n}
    nll_sum = 0.0
    tokens = 0
    for batch in batches:
        batch = to_device(batch, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        nll = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        nll_sum += nll.item()
        tokens += int((targets != -100).sum())
    loss = nll_sum / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
