"""Render a prompt/response exchange as one training text, in the model's own chat format when it has one.

An instruction-tuned model learns best from text laid out the way it was tuned (its chat template).
The prompt part is returned separately so that batching can mask it: the loss and the perplexity then
count only the answer's tokens, not the question the model is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

#: Layout for tokenizers without a chat template (and for model-independent tables).
USER_PREFIX = "User: "
ASSISTANT_PREFIX = "\nAssistant: "


@dataclass(frozen=True)
class ChatText:
    text: str  # the whole exchange
    prompt: str  # the leading part of ``text``, up to where the answer starts


def format_chat(tokenizer: PreTrainedTokenizerBase | None, prompt: str, response: str) -> ChatText:
    """One user turn and one assistant turn, with the tokenizer's chat template or the plain layout."""
    if tokenizer is None or not tokenizer.chat_template:
        head = f"{USER_PREFIX}{prompt}{ASSISTANT_PREFIX}"
        return ChatText(head + response, head)
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
    if not text.startswith(head):
        raise ValueError(
            "the tokenizer's chat template renders a conversation that does not start with its own "
            "generation prompt, so the prompt tokens cannot be told apart from the answer"
        )
    return ChatText(text, head)
