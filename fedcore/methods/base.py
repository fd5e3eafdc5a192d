"""The Planner protocol, the facts planners work from, and the plan every method starts from.

``base_plan`` is where the options every method accepts enter a plan: a fixed layer-dropout
configuration (``drop.mode=fixed``), personal layers (``ptls.fraction``) and fewer local steps for slow
devices (``train.target-speed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import NODE_DATA, SERVER_VALIDATION, RunConfig
from fedcore.core.devices import DeviceProfile, speed_matched_steps
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.core.seeding import derive_seed
from fedcore.data.batching import make_batches
from fedcore.data.proxy import load_proxy_texts
from fedcore.data.splits import server_splits
from fedcore.mechanisms.block_sensitivity import block_sensitivity
from fedcore.mechanisms.layer_dropout import DropConfig, memory_matched, speed_matched
from fedcore.model import tunable_names


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows about a connected client (reported by its info query)."""

    node_id: int
    #: the partition it holds; with node data (data.name='node'), its node id: its identity across rounds
    partition_id: int
    #: device profile from the SuperNode's node config or measured (memory budget, speed...)
    profile: dict[str, Any] = field(default_factory=dict)
    #: the client's training examples: the server's own count of its partition when ``examples_checked``,
    #: else what it stated at start-up (0 = not stated: its weight is bounded otherwise)
    num_examples: int = 0
    examples_checked: bool = False


@dataclass(frozen=True)
class ClientPlan:
    """One client's round as a planner decides it: the plan and the tensors sent with it."""

    plan: LayerPlan
    #: every tunable parameter the client's model holds, under the client's own names
    payload: dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientResult:
    """What a client's round produced, as planners see it (for online adaptation)."""

    partition_id: int
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)


class Planner(Protocol):
    """A method: plans every round for the clients picked, and learns from their results.

    Planner classes are built by ``from_model(cfg, model, tokenizer)`` from the server's global model
    (``fedcore/methods/registry.py``).
    """

    def plan(
        self, round_number: int, clients: list[ClientInfo], global_state: dict[str, torch.Tensor]
    ) -> dict[int, ClientPlan]:
        """Each picked client's plan and payload, keyed by node id (``global_state``: current tunables)."""
        ...

    def observe(self, round_number: int, results: list[ClientResult]) -> None:
        """Learn from the round's outcome (no-op for static planners)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state, for logs and checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpointed state_dict."""
        ...


def fixed_drop(cfg: RunConfig) -> DropConfig | None:
    return DropConfig(cfg.drop.mean_rate, cfg.drop.shape) if cfg.drop_mode == "fixed" else None


#: proxy examples for the block sensitivity that the 'sensitivity' drop shape reads
SENSITIVITY_PROXY_EXAMPLES = 64


def drop_sensitivity(
    cfg: RunConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase
) -> list[float] | None:
    """Block removal sensitivity of the server's starting model, when the run's dropout needs it.

    Measured once, on the proxy text (``proxy.name``), from the model the federation starts from, so a
    resumed run computes the same numbers again.
    """
    if cfg.drop_mode == "bandit":
        shapes = set(cfg.droppeft.shape_grid())
    else:
        shapes = {cfg.drop.shape} if cfg.drop_mode == "fixed" else set()
    if "sensitivity" not in shapes:
        return None
    return proxy_sensitivity(cfg, model, tokenizer)


def run_proxy_texts(cfg: RunConfig, count: int) -> list[str]:
    """``count`` texts of the run's proxy source (``proxy.name``), the server's validation texts included."""
    validation = (
        server_splits(cfg.data, cfg.model.task, cfg.seed).validation["text"]
        if cfg.proxy.name == SERVER_VALIDATION
        else ()
    )
    return load_proxy_texts(cfg.proxy.name, count, cfg.seed, validation)


def proxy_sensitivity(cfg: RunConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[float]:
    """Block removal sensitivity of ``model`` on the run's proxy text (no labels needed)."""
    texts = run_proxy_texts(cfg, SENSITIVITY_PROXY_EXAMPLES)
    table = Dataset.from_dict({"text": texts})
    return block_sensitivity(model, make_batches(table, tokenizer, cfg.model.task, cfg.model.max_length, 32))


def client_settings(cfg: RunConfig) -> dict[str, Any]:
    """The run's local-training settings as LayerPlan fields (every plan carries them to its client)."""
    return {
        "batch_size": cfg.train.batch_size,
        "weight_decay": cfg.train.weight_decay,
        "warmup_fraction": cfg.train.warmup_fraction,
        "clip_norm": cfg.train.clip_norm,
        "precision": cfg.train.precision,
        "eval_batch_size": cfg.eval.batch_size,
        "eval_examples": cfg.eval.client_examples,
        "wire_dtype": cfg.round.wire_dtype,
    }


def base_plan(
    cfg: RunConfig,
    round_number: int,
    client: ClientInfo,
    train_groups: list[str],
    num_blocks: int,
    drop: DropConfig | None = None,
    sensitivity: Sequence[float] | None = None,
) -> LayerPlan:
    """The plan every method starts from: train these groups with the run's local-training settings
    (``sensitivity``: per block, for the 'sensitivity' drop shape). Where the plan has layer dropout, a
    client slower than ``drop.target-speed`` runs at least its speed-matched rate (``speed_matched``) and a
    client whose memory holds fewer blocks than the model at least its memory-matched rate
    (``memory_matched``); a client slower than ``train.target-speed`` runs its speed-matched number of
    steps."""
    steps = cfg.train.local_steps
    if client.profile:  # a client that stated no profile runs as planned
        profile = DeviceProfile.from_config(client.profile)
        steps = speed_matched_steps(steps, profile.speed, cfg.train.target_speed)
        if drop is not None:
            drop = speed_matched(drop, profile.speed, cfg.drop.target_speed)
            drop = memory_matched(drop, profile.memory_blocks, num_blocks)
    return LayerPlan(
        round=round_number,
        rounds=cfg.rounds,
        train_groups=tuple(train_groups),
        drop_rates=drop.rates(num_blocks, sensitivity=sensitivity) if drop and drop.mean_rate > 0 else (),
        drop_warmup=cfg.drop.warmup,
        personal_fraction=cfg.ptls.fraction,
        steps=steps,
        epochs=cfg.train.local_epochs,
        lr=cfg.learning_rate,
        seed=derive_seed(cfg.seed, round_number, client.partition_id),
        # node data: the nodes' own held-out rows are the federation's test data
        evaluate_local=cfg.ptls.fraction > 0 or cfg.eval.local or cfg.data.name == NODE_DATA,
        label=drop.label if drop else "",
        **client_settings(cfg),
    )


def tunable_groups(model: nn.Module) -> list[str]:
    """The groups of ``model`` holding a tunable parameter, in model order."""
    layer_map = LayerMap(model)
    present = {layer_map.group_of(name) for name in tunable_names(model)}
    return [g for g in layer_map.all_groups() if g in present]
