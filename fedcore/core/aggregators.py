"""The names of the layer-wise aggregators, importable without torch: the run config validates them, and
a client's fast start-up path reads the run config."""

from __future__ import annotations

from typing import Literal

Aggregator = Literal["mean", "median", "trimmed-mean"]
