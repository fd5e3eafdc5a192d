"""The run directory is created where output.dir says, or refused with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcore.config import ConfigError
from server_app.run_log import new_run_dir


def test_an_unusable_output_dir_is_refused_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=rf"output.dir: cannot create a run directory under {blocker}/runs"):
        new_run_dir(str(blocker / "runs"), "fedavg")


def test_run_directories_are_fresh(tmp_path: Path) -> None:
    first, second = (
        new_run_dir(str(tmp_path / "runs"), "fedavg"),
        new_run_dir(str(tmp_path / "runs"), "fedavg"),
    )
    assert first != second and first.is_dir() and second.is_dir()
