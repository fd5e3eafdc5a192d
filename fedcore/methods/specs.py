"""The one table of federated methods: what each name means, read by config validation, the planner
registry and the docs.

Adding a method is one entry here plus its planner module. The table is plain data (the planner is named
by ``module:class``, imported only when a server builds it), so validating a run config stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TuningMode = Literal["full", "lora", "bitfit"]
TUNING_MODES: tuple[TuningMode, ...] = ("full", "lora", "bitfit")


@dataclass(frozen=True)
class MethodSpec:
    """One method: its defaults for the options left at 'auto', and the planner that serves it."""

    name: str
    #: tuning used when ``tuning.mode=auto``
    tuning: TuningMode
    #: tuning modes the method accepts explicitly (its own only, for the baselines)
    allowed_tuning: tuple[TuningMode, ...]
    #: layer dropout when ``drop.mode=auto``
    drop_mode: Literal["off", "bandit"]
    #: ``module:class`` of the planner; the class has ``from_model(cfg, model, tokenizer)``
    planner: str


_ALL_LAYERS = "fedcore.methods.baselines:AllLayersPlanner"
_DROPPEFT = "fedcore.methods.droppeft.planner:DropPeftPlanner"
_LEFF = "fedcore.methods.leff.planner:LeffPlanner"

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        # name, tuning for 'auto', tunings allowed, dropout for 'auto', planner
        MethodSpec("fedavg", "full", ("full",), "off", _ALL_LAYERS),
        MethodSpec("fedlora", "lora", ("lora",), "off", _ALL_LAYERS),
        MethodSpec("fedbitfit", "bitfit", ("bitfit",), "off", _ALL_LAYERS),
        MethodSpec("droppeft", "lora", TUNING_MODES, "bandit", _DROPPEFT),
        MethodSpec("leff", "full", ("full",), "off", _LEFF),
    )
}


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name``; an unknown name is an error naming the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
