"""LayerPlan: what one client does with each layer group in one round.

Every method is a planner that emits one LayerPlan per client per round; the client is one generic
executor of plans, and the plan holds everything the client needs to know about its round (what to train,
how, and how to reply); from the run config beside it the client reads only the run's model, data and
device profiles. A plan travels as a flat dict of scalars and typed lists (fedcore.core.wire turns that
into a Flower ConfigRecord).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class LayerPlan:
    round: int
    rounds: int
    #: groups the client trains this round ("head", "block.3"...); the rest stay frozen
    train_groups: tuple[str, ...]
    #: the client's block layout (LEFF): for each local block, the global block it is, or -1 for a
    #: frozen student block; empty = the client holds the full model
    block_sources: tuple[int, ...] = ()
    #: the dtype the client holds and runs its untrained blocks in ("bfloat16"; LEFF's bfloat16 stand-in);
    #: empty = the model's own
    frozen_dtype: str = ""
    #: per-block probability of skipping the block in a training step (empty = never skip)
    drop_rates: tuple[float, ...] = ()
    #: share of the federation's steps over which the drop rates ramp up from 0 (0 = full rates at once)
    drop_warmup: float = 0.0
    #: share of trained blocks the client keeps personal (never uploaded, never overwritten)
    personal_fraction: float = 0.0
    steps: int = 0
    epochs: int = 1
    lr: float = 1e-3
    seed: int = 0
    #: held-out local examples whose full-model loss is measured before and after training (0 = off)
    probe_examples: int = 0
    #: evaluate the client's personalised model on its local test split before training
    evaluate_local: bool = False
    #: free-form label of the planner's choice for this client (e.g. a bandit arm), for the logs
    label: str = ""
    # The client's local-training settings: the run config's train.*, eval.* and round.wire-dtype, which
    # the plan carries so that a client needs no other source for how to train (defaults: the config's).
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    #: gradient clipping (0 = off)
    clip_norm: float = 1.0
    #: "auto", "fp32" or "bf16" (train.precision)
    precision: str = "auto"
    eval_batch_size: int = 64
    #: own test examples the client evaluates before training when evaluate_local is on (0 = all)
    eval_examples: int = 200
    #: the precision of the uploaded update (round.wire-dtype)
    wire_dtype: str = "float32"

    def __post_init__(self) -> None:
        if any(not 0.0 <= p < 1.0 for p in self.drop_rates):
            raise ValueError(f"drop rates must lie in [0, 1): {self.drop_rates}")
        if not 0.0 <= self.drop_warmup <= 1.0:
            raise ValueError(f"drop_warmup must lie in [0, 1]: {self.drop_warmup}")
        if not 0.0 <= self.personal_fraction < 1.0:
            raise ValueError(f"personal_fraction must lie in [0, 1): {self.personal_fraction}")
        if not 1 <= self.round <= self.rounds:
            raise ValueError(f"round {self.round} outside 1..{self.rounds}")

    def to_dict(self) -> dict[str, Any]:
        # Flower's record lists must be typed and non-empty, so empty tuples travel as absent keys.
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {k: v for k, v in values.items() if v != []}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LayerPlan:
        known = {field.name for field in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown plan fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def as_log(self) -> dict[str, Any]:
        """A compact JSON-able view for metrics.jsonl."""
        row: dict[str, Any] = {"train_groups": len(self.train_groups), "label": self.label}
        if self.drop_rates:
            row["mean_drop"] = round(sum(self.drop_rates) / len(self.drop_rates), 4)
        if self.personal_fraction:
            row["personal_fraction"] = self.personal_fraction
        return row
