"""The layering the tree shows, checked by reading every import (also those inside functions).

- ``client_app`` and ``fedcore``'s ``core``, ``mechanisms`` and ``training`` never import ``fedcore.methods``:
  the client executes any plan without knowing the method, and the options every plan can use live below
  the methods;
- ``server_app`` and ``client_app`` never import each other, and ``fedcore`` imports neither;
- ``fedcore.core`` imports nothing else from ``fedcore``;
- inside ``fedcore`` only ``fedcore.core.wire`` touches Flower.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedcore", "server_app", "client_app")

#: (importing module prefix, forbidden imported-module prefix)
FORBIDDEN = [
    ("client_app", "fedcore.methods"),
    ("fedcore.core", "fedcore.methods"),
    ("fedcore.mechanisms", "fedcore.methods"),
    ("fedcore.training", "fedcore.methods"),
    ("server_app", "client_app"),
    ("client_app", "server_app"),
    ("fedcore", "server_app"),
    ("fedcore", "client_app"),
    ("fedcore.core", "fedcore.mechanisms"),
    ("fedcore.core", "fedcore.training"),
    ("fedcore.core", "fedcore.data"),
    ("fedcore.core", "fedcore.cli"),
    ("fedcore.core", "fedcore.model"),
    ("fedcore.core", "fedcore.config"),
    ("fedcore.core", "fedcore.presets"),
]
FLOWER_BRIDGE = "fedcore.core.wire"


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> Iterator[str]:
    """The module each import statement in the file names (relative imports resolved).

    ``from a import b`` counts as importing ``a.b``: ``b`` may be a module, and either way it lies in ``a``.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def broken_rule(module: str, imported: str) -> str | None:
    for importer, forbidden in FORBIDDEN:
        if _within(module, importer) and _within(imported, forbidden):
            return f"{importer} must not import {forbidden}"
    if _within(module, "fedcore") and module != FLOWER_BRIDGE and _within(imported, "flwr"):
        return f"only {FLOWER_BRIDGE} may touch Flower"
    return None


def violations(root: Path) -> list[str]:
    found = set()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            for imported in imported_modules(path, module):
                rule = broken_rule(module, imported)
                if rule:
                    found.add(f"{module} imports {imported} ({rule})")
    return sorted(found)


def test_the_tree_keeps_its_import_rules() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("client_app/executor.py", "from fedcore.methods.leff import planner\n", "client_app.executor"),
        ("fedcore/training/train.py", "def f():\n    import fedcore.methods.base\n", "training"),
        ("fedcore/mechanisms/x.py", "from ..methods import registry\n", "mechanisms"),
        ("server_app/federation.py", "from client_app import executor\n", "server_app"),
        ("fedcore/data/tables.py", "from flwr.app import Message\n", "Flower"),
        ("fedcore/core/plan.py", "from fedcore.config import RunConfig\n", "core"),
    ],
)
def test_a_forbidden_import_is_reported(tmp_path: Path, path: str, source: str, expected: str) -> None:
    file = tmp_path / path
    file.parent.mkdir(parents=True)
    file.write_text(source)
    (tmp_path / "fedcore" / "core").mkdir(parents=True, exist_ok=True)
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0], found
