"""Planners decide, per round and per client, what each layer group does (one LayerPlan each).

Every federated method in fedlayer is a planner; the client executor and the layer-wise aggregator are
shared by all of them.
"""

from __future__ import annotations

from fedcore.methods.base import ClientInfo, ClientResult, Planner
from fedcore.methods.registry import make_planner

__all__ = ["ClientInfo", "ClientResult", "Planner", "make_planner"]
