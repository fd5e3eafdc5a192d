"""Measure what a training round costs in memory: peak process memory and activation memory.

Peak RSS comes from a sampling thread (CPU) or the CUDA allocator's high-water mark (GPU). Activation
memory is counted exactly with autograd's saved-tensor hooks: the bytes a forward pass keeps for the
backward pass, excluding parameters. That is the memory layer dropout saves, independent of allocator
noise, so benchmarks compare it side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch
from torch import nn


@dataclass
class MemoryReading:
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float = 0.0


@contextmanager
def peak_memory(interval_s: float = 0.005) -> Iterator[MemoryReading]:
    """Track the peak RSS of this process (and CUDA max allocated) while the block runs."""
    reading = MemoryReading()
    process = psutil.Process()
    stop = threading.Event()
    peak = [process.memory_info().rss]

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], process.memory_info().rss)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield reading
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        reading.peak_rss_mb = peak[0] / 2**20
        if torch.cuda.is_available():
            reading.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20


class ActivationMeter:
    """Counts bytes saved for backward per step; ``peak_mb`` is the largest step seen."""

    def __init__(self, model: nn.Module) -> None:
        self._param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._seen: set[int] = set()
        self._bytes = 0
        self.peak_mb = 0.0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in self._param_storages and ptr not in self._seen:
            self._seen.add(ptr)
            self._bytes += tensor.untyped_storage().nbytes()
        return tensor

    @contextmanager
    def step(self) -> Iterator[None]:
        """Wrap one forward pass; the saved bytes of that pass are added to the readings."""
        self._seen.clear()
        self._bytes = 0
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield
        self.peak_mb = max(self.peak_mb, self._bytes / 2**20)
