"""The run's server optimiser, built from its ``server.*`` keys (the config itself imports no torch: a
client reads the same config)."""

from __future__ import annotations

from fedcore.config import ServerConfig
from fedcore.core.server_optimizer import FedAdam, MeanDelta, ServerOptimizer


def make_server_optimizer(server: ServerConfig) -> ServerOptimizer:
    """A fresh optimiser as configured."""
    if server.optimizer == "fedadam":
        return FedAdam(server.lr, server.beta_1, server.beta_2, server.tau)
    return MeanDelta()
