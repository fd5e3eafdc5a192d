"""Turn a text table into padded token batches for training and evaluation."""

from __future__ import annotations

import random

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from fedcore.data.chat import format_chat

Batch = dict[str, torch.Tensor]


def to_device(batch: Batch, device: torch.device, *, labels: bool = True) -> Batch:
    """The batch's tensors on ``device``; ``labels=False`` leaves the labels out (then no loss)."""
    return {k: v.to(device) for k, v in batch.items() if labels or k != "labels"}


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
    contributes to the loss or the perplexity. A causal-LM table with ``prompt`` and ``response``
    columns is a chat table: each pair is rendered with the tokenizer's chat template (the table's own
    ``text`` cannot know the model) and the prompt tokens are masked too, so only answers are scored.
    A classification table without a ``label`` column (unlabelled proxy text) gives batches without labels.
    """
    if len(table) == 0:
        return []
    prompt_lengths: list[int] | None = None
    if task == "causal-lm" and {"prompt", "response"} <= set(table.column_names):
        pairs = zip(table["prompt"], table["response"], strict=True)
        rendered = [format_chat(tokenizer, prompt, response) for prompt, response in pairs]
        encoded = tokenizer([r.text for r in rendered], truncation=True, max_length=max_length)
        prompts = [r.prompt for r in rendered]
        prompt_lengths = _prompt_lengths(tokenizer, prompts, encoded["input_ids"], max_length)
    else:
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
            if prompt_lengths is not None:
                for j, i in enumerate(rows):
                    first = int(batch["attention_mask"][j].argmax())  # after any left padding
                    batch["labels"][j, first : first + prompt_lengths[i]] = -100
        elif labels is not None:
            batch["labels"] = torch.tensor([labels[i] for i in rows], dtype=torch.long)
        batches.append(batch)
    return batches


def _prompt_lengths(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], full_ids: list[list[int]], max_length: int
) -> list[int]:
    """Tokens each example spends on its prompt: the common token prefix of prompt and whole text.

    Comparing token ids (not character offsets) works for every tokenizer, and a token that merges the
    prompt's end with the answer's start counts as answer; special tokens the tokenizer appends to the
    prompt alone (BERT's [SEP], an EOS) end the common prefix there.
    """
    prompt_ids = tokenizer(prompts, truncation=True, max_length=max_length)["input_ids"]
    lengths = []
    for head, full in zip(prompt_ids, full_ids, strict=True):
        n = 0
        while n < min(len(head), len(full)) and head[n] == full[n]:
            n += 1
        lengths.append(n)
    return lengths
