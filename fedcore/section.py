"""The base every run-config section derives from, wherever the section lives (``fedcore/config.py``
composes them; a method's own settings live beside its planner)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class Section(BaseModel):
    """Base of every config section: kebab-case keys, unknown keys refused, strict types, finite numbers."""

    model_config = ConfigDict(
        alias_generator=_kebab,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
    )


def project_option(default: Any, description: str, **constraints: Any) -> Any:
    """A field for a setting that is this project's own, not in the papers; the generated configuration
    reference marks it so."""
    return Field(default, description=description, json_schema_extra={"project_option": True}, **constraints)
