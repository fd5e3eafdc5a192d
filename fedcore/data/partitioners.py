"""Flower Datasets' partitioners, without paying for its plotting helpers at import.

``flwr_datasets/__init__`` imports ``flwr_datasets.visualization`` (matplotlib, seaborn: about 0.4 s per
process), and a deployed ClientApp is a fresh process per message. Before the package is first imported,
its visualization subpackage is registered as a stand-in that imports the real one on first use, so plotting
still works for whoever asks for it. This is the project's own start-up measure, not something Flower
Datasets offers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_PACKAGE = "flwr_datasets"
_PLOTTING = f"{_PACKAGE}.visualization"


#: the special names that mean real use (a submodule import, ``import *``); others, such as the ``__file__``
#: that ``inspect.getmodule`` reads from every loaded module, answer "not set" without loading
_USE_DUNDERS = ("__path__", "__all__")


class _ImportedOnFirstUse(types.ModuleType):
    """Stands in for ``flwr_datasets.visualization`` until one of its names is asked for."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and name not in _USE_DUNDERS:
            raise AttributeError(name)
        if sys.modules.get(_PLOTTING) is self:
            del sys.modules[_PLOTTING]
        return getattr(importlib.import_module(_PLOTTING), name)


def defer_plotting() -> None:
    """Register the stand-in, unless Flower Datasets is already loaded (then there is nothing to save)."""
    if _PACKAGE not in sys.modules:
        sys.modules.setdefault(_PLOTTING, _ImportedOnFirstUse(_PLOTTING))


defer_plotting()

from flwr_datasets.partitioner import (  # noqa: E402  (after defer_plotting, on purpose)
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
)

__all__ = ["DirichletPartitioner", "IidPartitioner", "NaturalIdPartitioner", "Partitioner"]
