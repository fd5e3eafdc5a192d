"""docs/configuration.md is the rendering of the run config's models, and the rendering shows what
validation applies: every key with its default, allowed values, bounds and origin."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from fedcore.cli.config_reference import REFERENCE_PATH, main, render
from fedcore.config import RunConfig, Section

ROOT = Path(__file__).resolve().parents[2]


class _Inner(Section):
    """An inner section."""

    mode: Literal["a", "b-c"] = Field("a", description="Pick | one.")
    rate: float = Field(0.5, ge=0, lt=1, json_schema_extra={"project_option": True})


class _Outer(Section):
    count: int = Field(3, gt=0, le=9, description="How many.")
    share: float | Literal["auto"] = "auto"
    inner_part: _Inner = _Inner()


def _row(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_committed_reference_matches_the_models() -> None:
    committed = (ROOT / REFERENCE_PATH).read_text()
    assert committed == render(), "docs/configuration.md is stale: run `fedlayer config-reference --write`"


def test_every_run_config_key_appears_with_its_default() -> None:
    text = render()
    for key, value in RunConfig().to_flat().items():
        shown = (
            str(value).lower()
            if isinstance(value, bool)
            else f'"{value}"'
            if isinstance(value, str)
            else value
        )
        assert _row(text, key)[3] == f"`{shown}`", key


def test_nested_sections_render_keys_types_bounds_and_project_marker() -> None:
    text = render(_Outer)
    assert _row(text, "count") == ["`count`", "", "int", "`3`", "> 0, <= 9", "How many."]
    assert _row(text, "share")[2] == "float or `'auto'`"
    assert _row(text, "inner-part.mode") == [
        "`inner-part.mode`",
        "",
        "`'a'` / `'b-c'`",
        '`"a"`',
        "",
        "Pick \\| one.",
    ]
    assert _row(text, "inner-part.rate")[1:5] == ["**project**", "float", "`0.5`", ">= 0, < 1"]
    assert "## `inner-part`\n\nAn inner section." in text


def test_write_rewrites_the_file_under_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    assert main(["--write"]) == 0
    assert (tmp_path / REFERENCE_PATH).read_text() == render()
    assert main(["--bogus"]) == 2
