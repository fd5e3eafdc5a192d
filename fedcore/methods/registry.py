"""Method name -> planner."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core.layers import LayerMap
from fedcore.methods.base import Planner
from fedcore.methods.baselines import AllLayersPlanner
from fedcore.methods.droppeft.planner import DropPeftPlanner
from fedcore.methods.leff.planner import LeffPlanner
from fedcore.model import tunable_names


def make_planner(cfg: RunConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Planner:
    """The planner of cfg.method for the server's global model."""
    layer_map = LayerMap(model)
    present = {layer_map.group_of(name) for name in tunable_names(model)}
    groups = [g for g in layer_map.all_groups() if g in present]
    if cfg.method == "droppeft":
        return DropPeftPlanner(cfg, groups, layer_map.num_blocks)
    if cfg.method == "leff":
        return LeffPlanner(cfg, model, tokenizer)
    return AllLayersPlanner(cfg, groups, layer_map.num_blocks)
