"""The model and data both apps share: a tiny random BERT with LoRA adapters, and a synthetic task.

No downloads: the base model is built from a config with a fixed seed, so the server and every client
hold the same frozen weights and only the tunable ones (LoRA adapters, classifier) travel. The task: does
the token sequence contain the marker token?
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 64
MARKER = 7
LENGTH = 16
BLOCKS = 4


def build_model() -> nn.Module:
    """The same tiny LoRA model in every process (seeded): only the adapters and the classifier train."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=BLOCKS,
        num_attention_heads=2,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    lora = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    return get_peft_model(BertForSequenceClassification(config), lora)


def tunable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train and travel: adapters and classifier."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def make_data(seed: int, examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sequences, half of them with the marker token somewhere; label 1 = marker present."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(MARKER + 1, VOCAB, (examples, LENGTH), generator=generator)
    labels = torch.randint(0, 2, (examples,), generator=generator)
    where = torch.randint(1, LENGTH, (examples,), generator=generator)
    ids[labels == 1, where[labels == 1]] = MARKER
    ids[:, 0] = 2  # [CLS]
    return ids, labels


def evaluate(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy) of ``model`` on the data."""
    model.eval()
    with torch.no_grad():
        output = model(input_ids=ids, labels=labels)
    accuracy = (output.logits.argmax(dim=-1) == labels).float().mean()
    return float(output.loss), float(accuracy)
