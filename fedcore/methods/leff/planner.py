"""LEFF: each client trains one window of the blocks it can afford; the rest arrive as stand-ins: the
blocks themselves in bfloat16 (this project's default, ``leff.stand-in``) or the paper's distilled students.

Per round the server (1) scores block importance I_l = sum (g * theta)^2 on proxy text with the current
global model (every ``leff.importance-every`` rounds), (2) samples for each client one window of L_i
consecutive blocks from a softmax over window scores (or random / round-robin windows, the paper's
ablations), (3) with students, distils the blocks before and after the window into students of
ceil(n * r) blocks and (4) sends the window, the stand-ins and the head. Students are cached per (segment,
global version): the global model changes every round, so a segment is reused across the clients of one
round.

Protected blocks (this project's choice, ``leff.keep-protected``): a student keeps every block of its
segment that the model cannot do without (removal sensitivity above twice the median, the blocks the
``sensitivity`` drop shape never drops) and compresses only the others, kept + ceil((n - kept) * r)
blocks. On a deep decoder the paper's ceil(n * r) students of short segments holding its first blocks
end worse than predicting the mean (``docs/research/leff-students.md``).

Warm start (this project's choice, ``leff.warm-students``): the students of the most recently used
segments are kept across rounds, and a segment needed again is distilled from its previous student for
``leff.warm-distill-steps`` steps instead of from teacher copies for ``leff.distill-steps``. The global
model moves little per round, so the student keeps what earlier rounds taught it; distilling a deep
decoder's segments from teacher copies is the server's main cost and a few steps leave most of the error
(``docs/research/leff-students.md``).

bfloat16 stand-in (this project's option, ``leff.stand-in='bfloat16'``): no students at all; the client
holds every block, those outside its window in bfloat16 (``fedcore.mechanisms.frozen_precision``; they
travel in float16). No distillation runs, and the window trains among the global model's own blocks.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core.devices import DeviceProfile
from fedcore.core.layers import HEAD, LayerMap, block_group
from fedcore.core.seeding import derive_seed
from fedcore.data.batching import make_batches
from fedcore.mechanisms.layer_dropout import protected_blocks
from fedcore.mechanisms.partial_model import STUDENT, Layout
from fedcore.methods.base import (
    ClientInfo,
    ClientPlan,
    ClientResult,
    base_plan,
    drop_sensitivity,
    fixed_drop,
    proxy_sensitivity,
    run_proxy_texts,
)
from fedcore.methods.leff.distill import CompressedSegment, distill_segment, segments_outside, student_depth
from fedcore.methods.leff.importance import READS_IMPORTANCE, block_importance, choose_window


@dataclasses.dataclass
class Assignment:
    """One client's round: its window and the students standing in for the rest."""

    partition_id: int
    window: range
    before: CompressedSegment | None
    after: CompressedSegment | None
    #: the depth of a client holding every block itself (``leff.stand-in='bfloat16'``); 0 = students
    exact_depth: int = 0

    @property
    def sources(self) -> tuple[int, ...]:
        if self.exact_depth:
            return tuple(range(self.exact_depth))
        before = len(self.before.blocks) if self.before else 0
        after = len(self.after.blocks) if self.after else 0
        return (STUDENT,) * before + tuple(self.window) + (STUDENT,) * after


class LeffPlanner:
    def __init__(self, cfg: RunConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self.cfg = cfg
        self.model = model  # the server's global model: teacher and importance scorer
        self.layer_map = LayerMap(model)
        texts = run_proxy_texts(cfg, cfg.proxy.examples)
        self.proxy_batches = make_batches(
            Dataset.from_dict({"text": texts}), tokenizer, cfg.model.task, cfg.model.max_length, 32
        )
        self.drop = fixed_drop(cfg)
        self.sensitivity = drop_sensitivity(cfg, model, tokenizer)
        #: which blocks a student starts from (``leff.student-init``): measured once, like the drop shape's
        self.students = cfg.leff.stand_in == "students"
        self.student_sensitivity = (
            (self.sensitivity or proxy_sensitivity(cfg, model, tokenizer))
            if self.students and cfg.leff.student_init == "sensitive"
            else None
        )
        #: blocks every student keeps whole (``leff.keep-protected``): those the model cannot do without
        self.protected = (
            set(protected_blocks(self.student_sensitivity))
            if cfg.leff.keep_protected and self.student_sensitivity
            else set()
        )
        self.importance: list[float] = []
        self.windows: dict[str, list[int]] = {}  # the last round's, for the logs
        #: how many planned client windows have held each block so far (``leff.window='least-trained'``)
        self.trained = [0] * self.layer_map.num_blocks
        self.cache: dict[tuple[int, int], CompressedSegment] = {}
        #: the last distilled student of recently used segments, most recent last (warm starts)
        self.warm: OrderedDict[tuple[int, int], nn.ModuleList] = OrderedDict()
        self.stats: dict[str, Any] = {}

    @classmethod
    def from_model(cls, cfg: RunConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> LeffPlanner:
        return cls(cfg, model, tokenizer)

    def _student(self, segment: range, round_number: int) -> CompressedSegment:
        key = (segment.start, segment.stop)
        if key in self.cache:
            self.stats["cache_hits"] += 1
            return self.cache[key]
        self.stats["cache_misses"] += 1
        leff = self.cfg.leff
        initial = self.warm.get(key)
        self.stats["warm_starts"] += initial is not None
        compressed = distill_segment(
            self.model,
            segment,
            student_depth(len(segment), leff.compression, kept=len(self.protected.intersection(segment))),
            self.proxy_batches,
            steps=leff.distill_steps if initial is None else leff.warm_distill_steps,
            lr=leff.distill_lr,
            alpha=leff.distill_alpha,
            seed=derive_seed(self.cfg.seed, round_number, segment.start, segment.stop),
            initial=initial,
            sensitivity=[self.student_sensitivity[i] for i in segment] if self.student_sensitivity else None,
        )
        self.stats["distill_seconds"] += compressed.seconds
        self.stats["student_error"].append(compressed.error_after)
        self.cache[key] = compressed
        self._keep_warm(key, compressed.blocks)
        return compressed

    def _keep_warm(self, key: tuple[int, int], blocks: nn.ModuleList) -> None:
        """Remember ``blocks`` as the segment's latest student, dropping the least recently used beyond
        ``leff.warm-students``."""
        self.warm[key] = blocks
        self.warm.move_to_end(key)
        while len(self.warm) > self.cfg.leff.warm_students:
            self.warm.popitem(last=False)

    def plan(
        self, round_number: int, clients: list[ClientInfo], global_state: dict[str, torch.Tensor]
    ) -> dict[int, ClientPlan]:
        leff = self.cfg.leff
        num_blocks = self.layer_map.num_blocks
        if leff.window not in READS_IMPORTANCE:
            self.importance = [0.0] * num_blocks  # never read: no importance pass on the server
        elif not self.importance or (round_number - 1) % leff.importance_every == 0:
            self.importance = block_importance(self.model, self.proxy_batches, self.cfg.model.task)
        self.cache = {}  # the global model changed: every student must be distilled anew
        self.stats = {
            "distill_seconds": 0.0,
            "cache_hits": 0,
            "cache_misses": 0,
            "warm_starts": 0,
            "student_error": [],
        }
        rng = np.random.default_rng(derive_seed(self.cfg.seed, round_number))
        self.windows = {}
        plans = {}
        for index, client in enumerate(clients):
            width = DeviceProfile.from_config(client.profile).trainable_blocks(num_blocks)
            start = choose_window(
                leff.window, self.importance, width, rng, round_number, index, leff.temperature, self.trained
            )
            window = range(start, start + width)
            for block in window:
                self.trained[block] += 1
            if self.students:
                segments = {seg.start < start: seg for seg in segments_outside(start, width, num_blocks)}
                before = self._student(segments[True], round_number) if True in segments else None
                after = self._student(segments[False], round_number) if False in segments else None
                assignment = Assignment(client.partition_id, window, before, after)
            else:
                assignment = Assignment(client.partition_id, window, None, None, exact_depth=num_blocks)
            self.windows[f"client-{client.partition_id}"] = [start, width]
            plan = base_plan(
                self.cfg,
                round_number,
                client,
                [*(block_group(i) for i in window), HEAD],
                num_blocks,
            )
            plan = dataclasses.replace(
                plan,
                block_sources=assignment.sources,
                frozen_dtype="" if self.students else "bfloat16",
                drop_rates=self._drop_rates(assignment),
                label=f"window {start}-{start + width - 1}",
            )
            plans[client.node_id] = ClientPlan(plan, self._payload(assignment, global_state))
        return plans

    def _drop_rates(self, assignment: Assignment) -> tuple[float, ...]:
        """STLD inside the window only (frozen blocks are never dropped); empty when dropout is off."""
        if self.drop is None or self.drop.mean_rate == 0:
            return ()
        window = assignment.window
        sensitivity = [self.sensitivity[i] for i in window] if self.sensitivity else None
        window_rates = iter(self.drop.rates(len(window), sensitivity=sensitivity))
        return tuple(next(window_rates) if s in window else 0.0 for s in assignment.sources)

    def _payload(
        self, assignment: Assignment, global_state: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Window blocks and head (local names) plus the students, or the other blocks in float16 for a
        bfloat16 stand-in; embeddings come from the client's disk."""
        layout = Layout(self.layer_map, assignment.sources)
        payload = layout.to_local(global_state)
        if assignment.exact_depth:
            return {name: self._wire_value(name, t, assignment.window) for name, t in payload.items()}
        if assignment.before:
            payload.update(layout.student_state(assignment.before.blocks, 0))
        if assignment.after:
            first = len(assignment.sources) - len(assignment.after.blocks)
            payload.update(layout.student_state(assignment.after.blocks, first))
        return payload

    def _wire_value(self, name: str, tensor: torch.Tensor, window: range) -> torch.Tensor:
        """A frozen block's tensor in float16 (the client holds it in bfloat16 anyway), unless float16
        cannot hold its values; window and head tensors as they are."""
        block = self.layer_map.block_index(name)
        if block is None or block in window:
            return tensor
        half = tensor.half()
        return half if torch.isfinite(half).all() else tensor

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        lookups = self.stats.get("cache_hits", 0) + self.stats.get("cache_misses", 0)
        return {
            "importance": self.importance,
            "windows": self.windows,
            "trained": list(self.trained),
            "distill_seconds": self.stats.get("distill_seconds", 0.0),
            "cache_hit_rate": self.stats.get("cache_hits", 0) / lookups if lookups else None,
            "warm_starts": self.stats.get("warm_starts", 0),
            "student_error": self.stats.get("student_error", []),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance = list(state["importance"])
        self.trained = list(state.get("trained") or self.trained)
