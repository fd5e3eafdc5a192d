"""Method name -> planner, through the one method table (``fedcore/methods/specs.py``)."""

from __future__ import annotations

import importlib

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.methods.base import Planner
from fedcore.methods.specs import MethodSpec, method_spec


def planner_class(spec: MethodSpec) -> type:
    module, _, name = spec.planner.partition(":")
    return getattr(importlib.import_module(module), name)


def make_planner(cfg: RunConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Planner:
    """The planner of cfg.method for the server's global model; an unknown method is an error."""
    return planner_class(method_spec(cfg.method)).from_model(cfg, model, tokenizer)
