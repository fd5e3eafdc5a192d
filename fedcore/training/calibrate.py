"""A deployed node measures itself at start-up on the run's model: block speed and memory.

One batch of the run's size and length (random tokens: the time and memory of a step do not depend on
the text) runs forward and backward through the tuned model a few times, for at least ``MIN_TIMED_S``
(a small model's step takes milliseconds, which the scheduler's noise would decide). The mean step time
divided by the number of blocks is one block's training time; its throughput, counted as 6 x block
parameters x tokens floating-point operations, over ``REFERENCE_FLOPS`` is the node's speed. Memory is
what the accelerator (or, without one, the system) has free now. All of this is the project's own rule.
"""

from __future__ import annotations

import time

import psutil
import torch
from torch import nn

from fedcore.config import RunConfig
from fedcore.core.devices import LIMITS, Calibration
from fedcore.core.layers import find_blocks
from fedcore.data.tables import configured_labels
from fedcore.model import build_model
from fedcore.training.memory import ActivationMeter

#: the throughput of speed 1 (a workstation in the named profiles): 10^12 operations per second
REFERENCE_FLOPS = 1e12
#: the shortest interval a node's speed is timed over
MIN_TIMED_S = 0.5
#: bytes per trainable parameter beyond the parameter itself: its gradient and Adam's two moments (fp32)
TRAINING_STATE_BYTES = 12


def calibrate(cfg: RunConfig, steps: int = 3) -> Calibration:
    """Measure this node on the run's model (at least ``steps`` timed steps and ``MIN_TIMED_S``, after
    one warm-up step)."""
    num_labels = max(2, len(configured_labels(cfg.data))) if cfg.model.task == "seq-cls" else 0
    model, tokenizer = build_model(cfg, num_labels)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    batch = _random_batch(cfg, len(tokenizer), device)
    _, blocks = find_blocks(model)
    meter = ActivationMeter(model)
    with meter.step():
        _step(model, batch)
    began, timed, elapsed = time.perf_counter(), 0, 0.0
    while timed < steps or elapsed < MIN_TIMED_S:
        _step(model, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timed, elapsed = timed + 1, time.perf_counter() - began
    block_s = elapsed / timed / len(blocks)
    block_params = sum(p.numel() for p in blocks[0].parameters())
    tokens = cfg.train.batch_size * cfg.model.max_length
    low, high = LIMITS["speed"]
    speed = min(high, max(low + 1e-6, 6 * block_params * tokens / block_s / REFERENCE_FLOPS))
    block_trainable = sum(p.numel() for p in blocks[0].parameters() if p.requires_grad)
    return Calibration(
        speed=speed,
        free_mb=_free_mb(device),
        model_mb=sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        block_mb=meter.peak_mb / len(blocks) + block_trainable * TRAINING_STATE_BYTES / 2**20,
    )


def _random_batch(cfg: RunConfig, vocab_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    shape = (cfg.train.batch_size, cfg.model.max_length)
    generator = torch.Generator().manual_seed(cfg.seed)
    input_ids = torch.randint(0, vocab_size, shape, generator=generator)
    labels = input_ids if cfg.model.task == "causal-lm" else torch.zeros(shape[0], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones(shape, dtype=torch.long), "labels": labels}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _step(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()


def _free_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    return psutil.virtual_memory().available / 2**20
