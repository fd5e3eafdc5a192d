"""LEFF compression of the blocks a client does not train, by knowledge distillation (server side).

From the paper: the unselected blocks are replaced by a student of ceil(n * r) blocks of the same type,
distilled on unlabelled public proxy text with loss (1 - alpha) * MSE(hidden states) + alpha * KL(attention
maps); the client keeps the student frozen and trains only its window.

Our design where the paper is silent (paper-inspired, not the paper's):
- The unselected blocks form up to two contiguous segments (before and after the window); each is
  compressed on its own, so the window sees teacher-like inputs and its output reaches a teacher-like rest.
- A student of k blocks starts as deep copies of k of the segment's teacher blocks, in their order. Which
  ones (this project's choice, ``leff.student-init``):
  - ``sensitive`` (default): the segment's last block, whose output the next block or the task head reads
    (see ``uniform``), and the k - 1 other blocks whose removal moves the model's last hidden state the most
    (``fedcore.mechanisms.block_sensitivity``, measured once on proxy text). A pretrained decoder leans on a
    few blocks: a student that keeps them starts close to its segment, while uniform spacing can drop
    them and distillation does not rebuild them (``docs/research/leff-students.md``).
  - ``uniform``: uniformly spaced blocks (Offsite-Tuning's emulator rule, indices round(i * (n - 1) /
    (k - 1)), first and last included); a one-block student copies the segment's LAST block, since the
    last block shapes the features the task head reads (removing it alone costs a fine-tuned model far
    more than removing any other single block; ``docs/research/leff-students.md``).
- The target is the segment's OUTPUT hidden state (padding masked); the KL matches student layer j to the
  teacher layer it was copied from. Distillation runs with dropout off, so targets are deterministic.
- A student may start from an earlier student of the same segment instead of from teacher copies
  (``initial``): the planner warm-starts each segment from the previous round's student, so a segment
  sampled again keeps improving across rounds at the cost of a few steps (this project's choice).
- The fit is the paper's plain MSE; the reported error is the normalised one (the share of the teacher's
  variance the student does not reproduce: 0 is exact, 1 is no better than the mean).

The mechanism is generic (no per-architecture code): the teacher's hidden states entering and leaving the
segment are captured with forward hooks; the student runs inside the real model with its block list
swapped for the student blocks, and a pre-hook feeds the captured teacher input to the first student block,
so the model itself still builds attention masks, position ids and rotary embeddings.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from fedcore.core.layers import find_blocks, swap_blocks
from fedcore.data.batching import Batch, to_device
from fedcore.model import training_state_kept
from fedcore.training.feature_error import feature_variance, masked_mse

#: ceil(n * r) tolerance so that float products such as 10 * 0.3 = 3.0000000000000004 give 3, not 4
_CEIL_SLACK = 1e-9


@dataclass
class CompressedSegment:
    """A distilled stand-in for the teacher blocks ``segment`` (absolute block indices)."""

    segment: range
    #: teacher block (absolute index) each student block was copied from and whose attention it matches
    source_indices: list[int]
    blocks: nn.ModuleList
    #: normalised error (squared error / teacher variance, per dimension, averaged) before and after
    error_before: float
    error_after: float
    seconds: float


class _StopForward(Exception):
    """Raised by a hook once the needed hidden state is captured: nothing after it has to run."""


def segments_outside(window_start: int, width: int, num_blocks: int) -> list[range]:
    """The non-empty runs of blocks before and after the window [window_start, window_start + width)."""
    if width < 1 or window_start < 0 or window_start + width > num_blocks:
        raise ValueError(f"window start {window_start} width {width} does not fit {num_blocks} blocks")
    runs = (range(0, window_start), range(window_start + width, num_blocks))
    return [run for run in runs if len(run) > 0]


def student_depth(n: int, ratio: float, kept: int = 0) -> int:
    """ceil(n * ratio) (the paper's), or kept + ceil((n - kept) * ratio) with ``kept`` blocks exempt from
    compression (``leff.keep-protected``); within 1..n either way (a ratio above 1: no compression)."""
    if n < 1 or ratio <= 0 or not 0 <= kept <= n:
        raise ValueError(f"student_depth needs n >= 1, ratio > 0, 0 <= kept <= n; got {n}, {ratio}, {kept}")
    return max(1, min(n, kept + math.ceil((n - kept) * ratio - _CEIL_SLACK)))


def student_sources(n: int, depth: int, sensitivity: Sequence[float] | None = None) -> list[int]:
    """Indices in 0..n-1 of the teacher blocks a student of ``depth`` blocks copies, in order.

    With ``sensitivity`` (one score per segment block): the segment's last block and the ``depth - 1``
    highest-scoring others, ties to the later block. Without: uniformly spaced with rounding half up,
    computed exactly in integers. Either way a single block is the segment's last (module docstring).
    """
    if not 1 <= depth <= n:
        raise ValueError(f"student depth must be in 1..{n}, got {depth}")
    if sensitivity is not None:
        if len(sensitivity) != n:
            raise ValueError(f"sensitivity has {len(sensitivity)} scores for a segment of {n} blocks")
        others = sorted(range(n - 1), key=lambda i: (sensitivity[i], i), reverse=True)[: depth - 1]
        return [*sorted(others), n - 1]
    if depth == 1:
        return [n - 1]
    return [(2 * i * (n - 1) + depth - 1) // (2 * (depth - 1)) for i in range(depth)]


def copy_sharing_config(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose model configs stay shared with the original.

    Configs are settings, not weights: a change of the model's config (e.g. its attention
    implementation) must reach every copy as well.
    """
    shared = {
        id(value): value
        for sub in module.modules()
        for value in vars(sub).values()
        if isinstance(value, PretrainedConfig)
    }
    return copy.deepcopy(module, memo=shared)


def init_student(
    teacher_blocks: Sequence[nn.Module], depth: int, sensitivity: Sequence[float] | None = None
) -> tuple[nn.ModuleList, list[int]]:
    """Copies (configs shared) of the teacher blocks ``student_sources`` picks, and their indices."""
    sources = student_sources(len(teacher_blocks), depth, sensitivity)
    students = [copy_sharing_config(teacher_blocks[index]) for index in sources]
    return nn.ModuleList(students), sources


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _first(output: Any) -> torch.Tensor:
    """A block returns its hidden state, or a tuple starting with it (DeBERTa-v2, older models)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _distill_mode(model: nn.Module, eager: bool) -> Iterator[None]:
    """Eval mode, every model parameter frozen, no KV cache, eager attention if asked; all restored after.

    Freezing the teacher keeps its .grad untouched while the student trains through the shared embeddings.
    """
    config = model.config
    use_cache = getattr(config, "use_cache", None)
    attn = config._attn_implementation
    with training_state_kept(model):
        try:
            model.eval()
            model.requires_grad_(False)
            if use_cache is not None:
                config.use_cache = False
            if eager and attn != "eager":
                config._attn_implementation = "eager"
            yield
        finally:
            if eager and attn != "eager":
                config._attn_implementation = attn
            if use_cache is not None:
                config.use_cache = use_cache


def _teacher_targets(
    model: nn.Module, segment: range, inputs: dict[str, torch.Tensor], attention_layers: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(hidden state entering the segment, hidden state leaving it, attention maps of attention_layers)."""
    blocks = find_blocks(model)[1]
    captured: dict[str, torch.Tensor] = {}

    def take_input(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["input"] = _hidden(args, kwargs).detach()

    def take_output(_: nn.Module, __: Any, output: Any) -> None:
        captured["output"] = _first(output).detach()
        if not attention_layers:
            raise _StopForward

    handles = [
        blocks[segment.start].register_forward_pre_hook(take_input, with_kwargs=True),
        blocks[segment.stop - 1].register_forward_hook(take_output),
    ]
    attentions: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            if attention_layers:
                outputs = model(**inputs, output_attentions=True)
                attentions = [outputs.attentions[i].detach() for i in attention_layers]
            else:
                model(**inputs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured["input"], captured["output"], attentions


def _student_forward(
    model: nn.Module,
    student: nn.ModuleList,
    inputs: dict[str, torch.Tensor],
    teacher_input: torch.Tensor,
    with_attentions: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the model with only the student blocks, the first fed the teacher's segment input."""
    captured: dict[str, torch.Tensor] = {}

    def feed(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": teacher_input}
        return (teacher_input, *args[1:]), kwargs

    def take_output(_: nn.Module, __: Any, output: Any) -> None:
        captured["output"] = _first(output)
        if not with_attentions:
            raise _StopForward

    handles = [
        student[0].register_forward_pre_hook(feed, with_kwargs=True),
        student[-1].register_forward_hook(take_output),
    ]
    attentions: list[torch.Tensor] = []
    try:
        with swap_blocks(model, student):
            if with_attentions:
                attentions = list(model(**inputs, output_attentions=True).attentions or ())
                if len(attentions) != len(student) or any(a is None for a in attentions):
                    raise RuntimeError(
                        f"{type(model).__name__} returned no attention maps for the student blocks; "
                        "distill with alpha=0"
                    )
            else:
                model(**inputs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured["output"], attentions


def _attention_kl(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None
) -> torch.Tensor:
    """KL(teacher || student) per query row, averaged over real query tokens, heads and matched layers."""
    losses = []
    for s, t in zip(student, teacher, strict=True):
        log_s = s.float().clamp_min(1e-12).log()
        row_kl = F.kl_div(log_s, t.float(), reduction="none").sum(dim=-1)  # (batch, heads, queries)
        if mask is None:
            losses.append(row_kl.mean())
        else:
            weights = mask.to(row_kl.dtype)[:, None, :].expand_as(row_kl)
            losses.append((row_kl * weights).sum() / weights.sum().clamp_min(1.0))
    return torch.stack(losses).mean()


def distill_segment(
    model: nn.Module,
    segment: range,
    depth: int,
    proxy_batches: Sequence[Batch],
    *,
    steps: int,
    lr: float,
    alpha: float,
    seed: int,
    initial: nn.ModuleList | None = None,
    sensitivity: Sequence[float] | None = None,
) -> CompressedSegment:
    """Distil the teacher blocks ``segment`` of ``model`` into a frozen student of ``depth`` blocks.

    Loss = (1 - alpha) * MSE(segment output) + alpha * KL(attention maps); AdamW on the student only, one
    proxy batch per step in a seeded shuffled order. The student starts as copies of the teacher blocks
    ``student_sources`` picks (the most sensitive ones when ``sensitivity``, one score per segment block, is
    given), or as a copy of ``initial`` (an earlier student of this segment, ``depth`` blocks, copied from
    the same sources). alpha > 0 needs attention probabilities, so attention runs eagerly for the duration
    (SDPA returns none). The model is left as
    found: block list, hooks, requires_grad flags, train/eval modes, config and teacher weights.
    """
    started = time.perf_counter()
    blocks = find_blocks(model)[1]
    if len(segment) == 0 or segment.step != 1 or segment.start < 0 or segment.stop > len(blocks):
        raise ValueError(f"segment {segment} is not a run of blocks within 0..{len(blocks) - 1}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 1 <= depth <= len(segment):
        raise ValueError(f"student depth must be in 1..{len(segment)}, got {depth}")
    if not proxy_batches or steps < 0:
        raise ValueError("distill_segment needs proxy batches and steps >= 0")
    if initial is not None and len(initial) != depth:
        raise ValueError(f"initial student has {len(initial)} blocks, expected {depth}")
    sources = student_sources(len(segment), depth, sensitivity)
    with_attentions = alpha > 0
    device = next(model.parameters()).device
    inputs = [to_device(batch, device, labels=False) for batch in proxy_batches]
    masks = [batch.get("attention_mask") for batch in inputs]
    with _distill_mode(model, eager=with_attentions):
        # The teacher runs first: it also installs transformers' lazy output-capturing hooks on its blocks,
        # which the student copies must carry to report attention maps.
        attention_layers = [segment.start + i for i in sources] if with_attentions else []
        targets = [_teacher_targets(model, segment, batch, attention_layers) for batch in inputs]
        variance = feature_variance([out for _, out, _ in targets], masks)
        if initial is None:
            student, _ = init_student([blocks[i] for i in segment], depth, sensitivity)
        else:
            student = copy_sharing_config(initial)
        student.eval()

        def loss_on(index: int) -> tuple[torch.Tensor, torch.Tensor]:
            """(training loss, normalised error) of one proxy batch."""
            teacher_in, teacher_out, teacher_attn = targets[index]
            output, attn = _student_forward(model, student, inputs[index], teacher_in, with_attentions)
            error = masked_mse(output, teacher_out, masks[index], variance)
            fit = masked_mse(output, teacher_out, masks[index])
            if not with_attentions:
                return fit, error
            return (1 - alpha) * fit + alpha * _attention_kl(attn, teacher_attn, masks[index]), error

        def mean_error() -> float:
            with torch.no_grad():
                return sum(loss_on(i)[1].item() for i in range(len(inputs))) / len(inputs)

        error_before = mean_error()
        student.requires_grad_(True)
        # no weight decay: the student should fit its teacher, not drift towards zero weights
        optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        order: list[int] = []
        for _ in range(steps):
            if not order:
                order = torch.randperm(len(inputs), generator=generator).tolist()
            objective, _ = loss_on(order.pop())
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
        student.requires_grad_(False)
        for param in student.parameters():
            param.grad = None
        error_after = mean_error()
    return CompressedSegment(
        segment=segment,
        source_indices=[segment.start + i for i in sources],
        blocks=student,
        error_before=error_before,
        error_after=error_after,
        seconds=time.perf_counter() - started,
    )
