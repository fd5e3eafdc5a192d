"""Layer addressing: every parameter belongs to one group, "embed", "block.<i>" or "head".

Planners speak in groups (train block.3, keep block.5 personal...), the client trains groups, and the
aggregator averages each group over the clients that trained it. The transformer block list is found
generically as the model's largest ``nn.ModuleList``, which works for BERT, RoBERTa, DeBERTa-v2, MPNet,
GPT-2, Llama, Qwen2, Mistral and their PEFT-wrapped forms without a per-architecture table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

EMBED = "embed"
HEAD = "head"
#: input-side parameters named without the word "embed": GPT-2's embeddings, and MPNet's relative position
#: bias, one table outside the blocks that every block's attention reads
_EMBED_PARTS = {"wte", "wpe", "relative_attention_bias"}


_BLOCK_PREFIX = "block."


def block_group(index: int) -> str:
    return f"{_BLOCK_PREFIX}{index}"


def block_of_group(group: str) -> int | None:
    """The block index of a group name ("block.3" -> 3); None for "embed" and "head"."""
    return int(group.removeprefix(_BLOCK_PREFIX)) if group.startswith(_BLOCK_PREFIX) else None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, module list) of the transformer blocks: the ModuleList holding most parameters."""
    best: tuple[str, nn.ModuleList] | None = None
    best_size = -1
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of transformer blocks")
    return best


@contextmanager
def swap_blocks(model: nn.Module, blocks: nn.ModuleList) -> Iterator[None]:
    """Temporarily run the model with another block list (a subset, or students around a window)."""
    path, original = find_blocks(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, blocks)
    try:
        yield
    finally:
        setattr(parent, attr, original)


class LayerMap:
    """Maps parameter names of one model (plain or PEFT-wrapped) to layer groups."""

    def __init__(self, model: nn.Module) -> None:
        self.blocks_path, blocks = find_blocks(model)
        self.num_blocks = len(blocks)
        self._block_re = re.compile(rf"^{re.escape(self.blocks_path)}\.(\d+)\.")

    def group_of(self, param_name: str) -> str:
        match = self._block_re.match(param_name)
        if match:
            return block_group(int(match.group(1)))
        parts = param_name.split(".")[:-1]
        if any("embed" in part or part in _EMBED_PARTS for part in parts):
            return EMBED
        return HEAD

    def block_index(self, param_name: str) -> int | None:
        match = self._block_re.match(param_name)
        return int(match.group(1)) if match else None

    def with_block_index(self, param_name: str, index: int) -> str:
        """The same parameter name in block ``index`` (e.g. block 3's query weight -> block 0's)."""
        return self._block_re.sub(f"{self.blocks_path}.{index}.", param_name, count=1)

    def block_param_name(self, index: int, inner_name: str) -> str:
        """Full name of a parameter named ``inner_name`` inside block ``index``."""
        return f"{self.blocks_path}.{index}.{inner_name}"

    def all_groups(self) -> list[str]:
        return [EMBED, *(block_group(i) for i in range(self.num_blocks)), HEAD]
