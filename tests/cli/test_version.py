"""`fedlayer --version` names the installed fedlayer, Flower and Python: what to compare across machines."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata


def test_version_names_fedlayer_flower_and_python() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", "--version"], capture_output=True, text=True, check=True
    )
    python = ".".join(map(str, sys.version_info[:3]))
    expected = f"fedlayer {metadata.version('fedlayer')} (flwr {metadata.version('flwr')}, Python {python})"
    assert result.stdout.strip() == expected
    assert metadata.version("flwr") == "1.39.0"
