"""Turn a text table into padded token batches for training and evaluation."""

from __future__ import annotations

import random

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

Batch = dict[str, torch.Tensor]


def make_batches(
    table: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    max_length: int,
    batch_size: int,
    shuffle_seed: int | None = None,
) -> list[Batch]:
    """Tokenize once, then pad each batch only to its longest example (short texts stay cheap).

    For causal LM the labels are the input ids with padding masked out (-100), so padding never
    contributes to the loss or the perplexity. A classification table without a ``label`` column
    (unlabelled proxy text) gives batches without labels.
    """
    if len(table) == 0:
        return []
    encoded = tokenizer(list(table["text"]), truncation=True, max_length=max_length)
    order = list(range(len(table)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    labels = table["label"] if task == "seq-cls" and "label" in table.column_names else None
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        features = [{"input_ids": encoded["input_ids"][i]} for i in rows]
        batch = dict(tokenizer.pad(features, return_tensors="pt"))
        if task == "causal-lm":
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        elif labels is not None:
            batch["labels"] = torch.tensor([labels[i] for i in rows], dtype=torch.long)
        batches.append(batch)
    return batches
