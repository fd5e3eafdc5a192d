"""What a frozen SmolLM2 block costs per training step, by how its weights are held.

LEFF's bfloat16 stand-in (``leff.stand-in='bfloat16'``) halves a frozen block's bytes. Whether it also
computes in bfloat16 decides its speed: on CPUs without bfloat16 instructions (AVX2 only, no
AVX512-BF16 or AMX) torch's bfloat16 matrix products are far slower than float32. This script times one
forward and backward pass (gradient to the input only, as for a block after a client's window) of a
SmolLM2-135M-shaped Llama block with random weights, held three ways side by side in one process:

- ``float32``: the block as FedAvg holds it;
- ``bfloat16 arithmetic``: the whole block in bfloat16, inputs cast to it;
- ``bfloat16 storage``: the product's form (``fedcore.mechanisms.frozen_precision``): linear weights in
  bfloat16, widened to float32 one at a time for each product.

    python benchmarks/bfloat16_matmul.py [--tokens 1024] [--repeats 5]
    # -> benchmarks/results/bfloat16_matmul.{md,json}
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from benchlib import RESULTS, command_line, header, machine, table, write_results
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from fedcore.mechanisms.frozen_precision import hold_frozen_blocks

SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "num_hidden_layers": 1,
}


class _OneBlock(nn.Module):
    """One decoder layer in a ModuleList, so that ``hold_frozen_blocks`` finds it as the model's blocks."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, layer_idx=0)])


def _step_seconds(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - began) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per step (batch x sequence)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M, attn_implementation="sdpa")
    model = _OneBlock(config).eval()
    sequence = 128
    hidden = torch.randn(args.tokens // sequence, sequence, config.hidden_size)
    positions = torch.arange(sequence).unsqueeze(0)
    rotary = LlamaRotaryEmbedding(config)(hidden, positions)
    for param in model.parameters():
        param.requires_grad_(False)

    def step_at(dtype: torch.dtype) -> Callable[[], None]:
        def step() -> None:
            x = hidden.to(dtype).requires_grad_(True)
            cos_sin = tuple(t.to(dtype) for t in rotary)
            out = model.layers[0](x, position_embeddings=cos_sin)
            out = out[0] if isinstance(out, tuple) else out
            out.float().sum().backward()

        return step

    timings = {"float32": _step_seconds(step_at(torch.float32), args.repeats)}
    model.to(torch.bfloat16)
    timings["bfloat16 arithmetic"] = _step_seconds(step_at(torch.bfloat16), args.repeats)
    model.to(torch.float32)
    hold_frozen_blocks(model, set(), "bfloat16", torch.float32)
    timings["bfloat16 storage"] = _step_seconds(step_at(torch.float32), args.repeats)

    info = machine()
    cpu_capability = torch.backends.cpu.get_cpu_capability()
    rows = [[name, seconds * 1e3, seconds / timings["float32"]] for name, seconds in timings.items()]
    markdown = header("A frozen SmolLM2 block's step by weight precision", info, command_line(), quick=False)
    markdown += (
        f"\nOne forward + backward (input gradient only) of one SmolLM2-135M-shaped block, {args.tokens} "
        f"tokens ({sequence} per sequence), mean of {args.repeats} after a warm-up; torch CPU capability "
        f"`{cpu_capability}`.\n\n"
    )
    markdown += table(["holding", "ms / step", "x float32"], rows)
    data = {"machine": info, "cpu_capability": cpu_capability, "tokens": args.tokens, "seconds": timings}
    write_results("bfloat16_matmul", RESULTS, markdown, data)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
