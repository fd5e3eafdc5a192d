"""The names of the layer-dropout shapes, importable without torch: the shared layer-dropout settings and
DropPEFT's bandit arms both validate them."""

from __future__ import annotations

from typing import Literal, get_args

DropShape = Literal["uniform", "incremental", "sensitivity"]
DROP_SHAPES: tuple[str, ...] = get_args(DropShape)
