"""The local training loop that executes one LayerPlan on one client.

It trains only the tunable parameters of the plan's groups, skips blocks stochastically when the plan
carries drop rates, and returns the change of every trained parameter (the update) with the round's
cost: examples, loss, compute time, peak memory and activation memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from fedcore.core import wire
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.data.batching import Batch, to_device
from fedcore.mechanisms.layer_dropout import only_blocks, sample_active_blocks
from fedcore.model import tunable_names
from fedcore.training.memory import ActivationMeter, peak_memory


@dataclass
class TrainOutcome:
    #: new value minus start value, for every parameter the client trained
    update: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)


def learning_rate(plan: LayerPlan, step: int, steps: int, warmup_fraction: float) -> float:
    """Linear warm-up then linear decay over the whole federation (all rounds), not per round."""
    total = steps * plan.rounds
    position = (plan.round - 1) * steps + step
    warmup = warmup_fraction * total
    if position < warmup:
        return plan.lr * min(1.0, (position + 1) / warmup)
    return plan.lr * (total - position) / (total - warmup)


def drop_scale(plan: LayerPlan, step: int, steps: int) -> float:
    """Progressive layer dropping (this project's option, after Zhang & He 2020): the plan's drop rates are
    scaled from 0 up to 1 over the first ``drop_warmup`` share of the federation's steps, because a model
    that skips blocks from the first step learns far more slowly than one that starts at full depth."""
    if plan.drop_warmup <= 0:
        return 1.0
    position = (plan.round - 1) * steps + step
    return min(1.0, position / (plan.drop_warmup * steps * plan.rounds))


def trained_parameters(model: nn.Module, layer_map: LayerMap, plan: LayerPlan) -> dict[str, nn.Parameter]:
    """The tunable parameters that belong to the plan's train groups; everything else is frozen now."""
    wanted = set(plan.train_groups)
    names = {n for n in tunable_names(model) if layer_map.group_of(n) in wanted}
    params = {}
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
        if name in names:
            params[name] = param
    return params


def compute_precision(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """The autocast context of a training step: bf16 where asked for or (auto) where the GPU supports it.

    Parameters, gradients and optimizer state stay fp32; matrix products run in bf16 and keep their
    saved inputs in bf16, which cuts activation memory and speeds up GPUs with bf16 units (Jetson Orin).
    """
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else "fp32"
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_plan(
    model: nn.Module,
    batches: list[Batch],
    plan: LayerPlan,
    *,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.1,
    clip_norm: float = 1.0,
    precision: str = "fp32",
    start: Mapping[str, torch.Tensor] | None = None,
    device: torch.device | None = None,
    layer_map: LayerMap | None = None,
) -> TrainOutcome:
    """Train the plan's groups; ``start`` may hold the trained parameters' current values (on the CPU)
    when the caller keeps them anyway, which spares a copy of every trained parameter; ``layer_map`` is
    the model's, when the caller has built it already."""
    if not batches:
        raise ValueError("no training data on this client")
    device = device or torch.device("cpu")
    model.to(device).train()
    layer_map = layer_map or LayerMap(model)
    if plan.drop_rates and len(plan.drop_rates) != layer_map.num_blocks:
        raise ValueError(f"plan has {len(plan.drop_rates)} drop rates for {layer_map.num_blocks} blocks")
    params = trained_parameters(model, layer_map, plan)
    if not params:
        raise ValueError(f"plan trains no tunable parameter (groups {list(plan.train_groups)})")
    start = {name: _start_value(p, (start or {}).get(name)) for name, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=plan.lr, weight_decay=weight_decay)
    steps = plan.steps or plan.epochs * len(batches)
    generator = torch.Generator().manual_seed(plan.seed)
    torch.manual_seed(plan.seed)  # dropout inside the model: a round replays identically (resume)
    meter = ActivationMeter(model)
    losses: list[float] = []
    blocks_run = 0
    began = time.perf_counter()
    with peak_memory() as memory:
        for step in range(steps):
            batch = to_device(batches[step % len(batches)], device)
            scale = drop_scale(plan, step, steps)
            rates = [p * scale for p in plan.drop_rates]
            active = sample_active_blocks(rates, generator) if rates else list(range(layer_map.num_blocks))
            lr = learning_rate(plan, step, steps, warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            blocks_run += len(active)
            with meter.step(), only_blocks(model, active), compute_precision(precision, device):
                loss = model(**batch).loss
            loss.backward()
            if clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params.values(), clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    compute_time = time.perf_counter() - began
    model.eval()
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"training loss became non-finite (last {losses[-1]})")
    update = {name: p.detach().cpu() - start[name].cpu() for name, p in params.items()}
    return TrainOutcome(
        update=update,
        metrics={
            wire.TRAIN_LOSS: sum(losses) / len(losses),
            wire.STEPS: steps,
            wire.SAMPLES_PROCESSED: sum(len(batches[s % len(batches)]["labels"]) for s in range(steps)),
            wire.COMPUTE_TIME_S: compute_time,
            wire.PEAK_RSS_MB: memory.peak_rss_mb,
            wire.PEAK_CUDA_MB: memory.peak_cuda_mb,
            wire.ACTIVATION_MB: meter.peak_mb,
            wire.MEAN_ACTIVE_BLOCKS: blocks_run / steps,
        },
    )


def _start_value(param: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
    """The caller's copy of a parameter's start value when it matches exactly, else a fresh copy."""
    if given is not None and given.dtype == param.dtype and given.shape == param.shape:
        return given
    return param.detach().clone()
