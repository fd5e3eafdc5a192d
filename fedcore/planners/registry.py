"""Method name -> planner."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.layers import LayerMap
from fedcore.model import tunable_names
from fedcore.planners.base import Planner
from fedcore.planners.baselines import AllLayersPlanner
from fedcore.planners.droppeft import DropPeftPlanner
from fedcore.planners.leff import LeffPlanner


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
