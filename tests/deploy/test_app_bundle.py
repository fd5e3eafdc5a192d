"""The app bundle (FAB) every node receives with a run holds the app's code and nothing else."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

ROOT = Path(__file__).resolve().parents[2]
APP_PACKAGES = ("fedcore", "server_app", "client_app")


def test_bundle_holds_every_app_module_and_no_benchmarks_docs_tests_or_deploy_files() -> None:
    fab = build_fab_from_disk(ROOT)  # what `flwr run` sends: the same build function
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {*APP_PACKAGES, "pyproject.toml", ".info"}, sorted(top_level)
    modules = {  # the code and the files it reads (presets)
        path.relative_to(ROOT).as_posix()
        for package in APP_PACKAGES
        for pattern in ("*.py", "*.toml")
        for path in (ROOT / package).rglob(pattern)
        if "__pycache__" not in path.parts
    }
    assert "fedcore/presets/paper-cls.toml" in modules
    assert modules <= names, sorted(modules - names)
    assert len(fab) < 500_000, f"{len(fab):,} bytes"
