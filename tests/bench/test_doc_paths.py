"""Every file the README and the docs name exists: repository paths, relative links, and the bare result
file names the research pages cite (results live in ``benchmarks/results/`` or the research archive)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULT_DIRS = (ROOT / "benchmarks" / "results", ROOT / "docs" / "research" / "archive" / "results")
#: generated result records quote the commands that made them, paths of that day included
_RECORDS = ROOT / "docs" / "research" / "archive" / "results"
_PATH = re.compile(r"(?<![\w/.-])((?:benchmarks|docs)/[\w./*-]*[\w*])")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_RESULT_NAME = re.compile(r"`([\w.-]+\.(?:md|json|jsonl))`")
#: the files of a run directory, which the docs name without a path
_RUN_FILES = {
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "report.md",
    "samples.json",
    "run.json",
    "checkpoint.json",
}


def _documents() -> list[Path]:
    docs = [p for p in (ROOT / "docs").rglob("*.md") if _RECORDS not in p.parents]
    return [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted(docs)]


def _exists(path: str) -> bool:
    if path.startswith("benchmarks/runs"):  # where runs land: made by the runner, never committed
        return True
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


@pytest.mark.parametrize("document", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_file_exists(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    missing = [p for p in _PATH.findall(text) if not _exists(p.rstrip("."))]
    for target in _LINK.findall(text):
        if "://" not in target and not (document.parent / target).exists():
            missing.append(target)
    for name in set(_RESULT_NAME.findall(text)) - _RUN_FILES:
        known = any((d / name).exists() for d in RESULT_DIRS) or any(ROOT.rglob(name))
        if not known:
            missing.append(name)
    assert not missing, f"{document.relative_to(ROOT)} names files that do not exist: {sorted(set(missing))}"
