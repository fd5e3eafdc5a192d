"""The version `fedlayer --version` reports is the package's."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import fedcore

ROOT = Path(__file__).resolve().parents[2]


def test_source_version_matches_pyproject_and_the_installed_package() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert fedcore.__version__ == declared == metadata.version("fedlayer")
