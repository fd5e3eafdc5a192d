"""Named run presets: the TOML files in this folder, selected with ``preset=<name>``.

A preset sets every key it lists; a key the run sets explicitly (``--run-config``) wins over it, whatever
its value (``RunConfig.from_flower`` tells the two apart by Flower's record of the run's overrides). A
preset may name another preset as its base with a ``preset`` key; its own keys win over the base's. A
preset file also works as Flower run config by itself: ``flwr run . --run-config
fedcore/presets/paper-cls.toml`` (Flower accepts one file and no other overrides with it).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent


class PresetError(ValueError):
    """An unknown preset, or presets that name each other as their base."""


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.toml"))


def preset_values(name: Any, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flat dotted-key settings of preset ``name``, its bases' included ({} for none: '' or a
    non-text value, which config validation then refuses)."""
    if not name or not isinstance(name, str):
        return {}
    if name not in preset_names():
        raise PresetError(f"unknown preset '{name}'; known: {', '.join(preset_names())}")
    if name in chain:
        raise PresetError(f"presets name each other as their base: {' -> '.join((*chain, name))}")
    values = flatten(tomllib.loads((PRESET_DIR / f"{name}.toml").read_text()))
    return {**preset_values(values.pop("preset", ""), (*chain, name)), **values}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables as flat dotted keys, the form a run config takes (``leff.window``)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
