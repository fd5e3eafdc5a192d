"""Generated samples at the end of a causal-LM run, so a person can see what fine-tuning changed."""

from __future__ import annotations

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

PROMPT_WORDS = 12
NEW_TOKENS = 40


@torch.no_grad()
def generate_samples(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, test: Dataset, count: int = 3
) -> list[dict[str, str]]:
    """Greedy continuations of the opening words of the first held-out texts (or of chat prompts)."""
    model.eval()
    samples = []
    for row in test.select(range(min(count, len(test)))):
        if "prompt" in row:
            messages = [{"role": "user", "content": row["prompt"]}]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = " ".join(row["text"].split()[:PROMPT_WORDS])
        encoded = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        output = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        samples.append({"prompt": prompt, "continuation": continuation})
    return samples
