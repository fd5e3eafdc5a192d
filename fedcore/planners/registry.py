"""Method name -> planner."""

from __future__ import annotations

from fedcore.config import RunConfig
from fedcore.planners.base import Planner
from fedcore.planners.baselines import AllLayersPlanner
from fedcore.planners.droppeft import DropPeftPlanner


def make_planner(cfg: RunConfig, tunable_groups: list[str], num_blocks: int) -> Planner:
    if cfg.method in ("fedavg", "fedlora", "fedbitfit"):
        return AllLayersPlanner(cfg, tunable_groups, num_blocks)
    if cfg.method == "droppeft":
        return DropPeftPlanner(cfg, tunable_groups, num_blocks)
    raise NotImplementedError(f"method={cfg.method} is not available in this build")
