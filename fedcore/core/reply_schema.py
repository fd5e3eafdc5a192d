"""What a client may say: the declared schema of its train-reply metrics and of its start-up info.

Every value a client supplies is checked here (known key, type, finite range) before anything on the
server reads it, so a wrong, hostile or garbled value rejects that one reply or node with a reason
instead of crashing the round, a planner or the run log. The ranges are this project's plausibility
bounds: wide enough for any honest client, narrow enough that no arithmetic on them overflows.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fedcore.core import wire
from fedcore.core.devices import LIMITS
from fedcore.core.limits import clip_text

#: the most training examples one client may state (the aggregation weight is bounded further)
MAX_EXAMPLES = 10_000_000
_MAX_COUNT = 1_000_000_000
_MAX_SECONDS = 1e7
_MAX_MB = 1e9
_MAX_LOSS = 1e6
_MAX_BLOCKS = 100_000


class SchemaError(ValueError):
    """A client-supplied value breaks the schema; the message names the key and the rule."""


def _shown(value: Any) -> str:
    """A client's value as an error message quotes it: lists by their length, texts cut short."""
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    return clip_text(repr(value), 80)


@dataclass(frozen=True)
class Number:
    """A number in [low, high] (or (low, high] with ``above``); ``integer`` refuses floats."""

    low: float
    high: float
    integer: bool = False
    above: bool = False

    def check(self, key: str, value: Any) -> float:
        kinds = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            wanted = "an integer" if self.integer else "a number"
            raise SchemaError(f"{key}: expected {wanted}, got {_shown(value)}")
        if not math.isfinite(value):
            raise SchemaError(f"{key}: not finite ({value!r})")
        too_low = value <= self.low if self.above else value < self.low
        if too_low or value > self.high:
            bracket = "(" if self.above else "["
            raise SchemaError(f"{key}: {value:g} outside {bracket}{self.low:g}, {self.high:g}]")
        return value


@dataclass(frozen=True)
class Text:
    """A non-empty string of at most ``max_chars``, one of ``choices`` when given."""

    choices: tuple[str, ...] = ()
    max_chars: int = 200

    def check(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise SchemaError(f"{key}: expected a non-empty string, got {_shown(value)}")
        if len(value) > self.max_chars:
            raise SchemaError(f"{key}: {len(value)} characters, at most {self.max_chars}")
        if self.choices and value not in self.choices:
            raise SchemaError(f"{key}: {_shown(value)} is not one of {list(self.choices)}")
        return value


Spec = Number | Text

_SECONDS = Number(0.0, _MAX_SECONDS, above=True)
_MB = Number(0.0, _MAX_MB)
_LOSS = Number(0.0, _MAX_LOSS)
_SHARE = Number(0.0, 1.0)

#: train reply, TRAIN_METRICS: every key a client sends each round
TRAIN_METRICS: dict[str, Spec] = {
    wire.EXAMPLES: Number(1, MAX_EXAMPLES, integer=True),
    wire.TRAIN_LOSS: _LOSS,
    wire.STEPS: Number(1, _MAX_COUNT, integer=True),
    wire.SAMPLES_PROCESSED: Number(1, _MAX_COUNT, integer=True),
    wire.COMPUTE_TIME_S: _SECONDS,
    wire.DEVICE_TIME_S: _SECONDS,
    wire.WALL_TIME_S: _SECONDS,
    wire.PEAK_RSS_MB: _MB,
    wire.PEAK_CUDA_MB: _MB,
    wire.ACTIVATION_MB: _MB,
    wire.MEAN_ACTIVE_BLOCKS: Number(0.0, _MAX_BLOCKS),
    wire.MODEL_BLOCKS: Number(1, _MAX_BLOCKS, integer=True),
    wire.PERSONAL_BLOCKS: Number(0, _MAX_BLOCKS, integer=True),
    wire.BYTES_DOWN: Number(0, 2**62, integer=True),
    wire.BYTES_UP: Number(0, 2**62, integer=True),
}
#: sent when the plan asks for the probe (DropPEFT's reward)
PROBE_METRICS: dict[str, Spec] = {wire.PROBE_LOSS_BEFORE: _LOSS, wire.PROBE_LOSS_AFTER: _LOSS}
#: sent when the plan asks for the personalised model's local evaluation (evaluate()'s keys)
PERSONAL_METRICS: dict[str, Spec] = {
    wire.PERSONAL_PREFIX + "accuracy": _SHARE,
    wire.PERSONAL_PREFIX + "macro_f1": _SHARE,
    wire.PERSONAL_PREFIX + "loss": _LOSS,
    wire.PERSONAL_PREFIX + "perplexity": Number(1.0, 1e22),  # evaluate() caps the loss at 50,
}

#: query "info", NODE_INFO: what a node states about itself at start-up (other node-config keys are ignored)
NODE_INFO: dict[str, Spec] = {
    wire.NODE_PARTITION_ID: Number(0, _MAX_COUNT, integer=True),
    wire.NODE_NUM_PARTITIONS: Number(1, _MAX_COUNT, integer=True),
    wire.NODE_NUM_EXAMPLES: Number(1, MAX_EXAMPLES, integer=True),
    "device-name": Text(),
    **{f"device-{key}": Number(low, high, above=True) for key, (low, high) in LIMITS.items()},
    "device-max-blocks": Number(0, _MAX_BLOCKS, integer=True),
    "device-memory-blocks": Number(0, _MAX_BLOCKS, integer=True),
}
#: a node may leave out its partition size (the fast info query answers without loading the data); a node
#: with its own data claims no partition (the server checks which of the two the run expects)
NODE_INFO_REQUIRED = frozenset(NODE_INFO) - {
    wire.NODE_PARTITION_ID,
    wire.NODE_NUM_PARTITIONS,
    wire.NODE_NUM_EXAMPLES,
    "device-memory-blocks",  # 0 = not known; a node of an older release does not state it
}


def check_values(
    values: Mapping[str, Any],
    schema: Mapping[str, Spec],
    required: Collection[str],
    *,
    ignore_unknown: bool = False,
) -> dict[str, Any]:
    """The values the schema declares, each checked; a missing required or (unless ignored) unknown key
    is refused. Raises SchemaError naming the first offending key."""
    missing = sorted(set(required) - set(values))
    if missing:
        raise SchemaError(f"missing {missing}")
    unknown = sorted(set(values) - set(schema))
    if unknown and not ignore_unknown:
        raise SchemaError(f"unknown keys {[clip_text(key, 40) for key in unknown[:5]]}")
    return {key: schema[key].check(key, value) for key, value in values.items() if key in schema}


def check_train_metrics(metrics: Mapping[str, Any], *, probe: bool) -> dict[str, Any]:
    """A train reply's metrics; the probe losses are required exactly when the plan asked for them."""
    schema = {**TRAIN_METRICS, **PERSONAL_METRICS, **(PROBE_METRICS if probe else {})}
    required = {*TRAIN_METRICS, *(PROBE_METRICS if probe else {})}
    return check_values(metrics, schema, required)


def check_node_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """A node's start-up statement; node-config keys outside the schema are dropped unread."""
    return check_values(info, NODE_INFO, NODE_INFO_REQUIRED, ignore_unknown=True)
