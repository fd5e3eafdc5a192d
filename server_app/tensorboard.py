"""Optional TensorBoard event files of a run, for people who watch runs in a dashboard.

Off by default (``output.tensorboard = true`` turns it on) and needs the ``tensorboard`` extra
(``pip install 'fedlayer[tensorboard]'``). Every evaluated round adds each number of the round's global
row (accuracy or perplexity, loss, times, traffic, memory, replies) as a scalar at step = round, under
``<run dir>/tensorboard``; ``tensorboard --logdir outputs`` then shows every run side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TensorBoardMissing(RuntimeError):
    """output.tensorboard is on but the tensorboard package is not installed."""


class TensorBoardLog:
    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TensorBoardMissing(
                f"output.tensorboard=true needs the tensorboard package ({exc}); install it with "
                "pip install 'fedlayer[tensorboard]' or set output.tensorboard=false"
            ) from None
        self.directory = directory
        self._writer = SummaryWriter(log_dir=str(directory))

    def round(self, row: dict[str, Any]) -> None:
        """One scalar per number in a global row, at step = its round."""
        for key, value in row.items():
            if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, global_step=row["round"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_tensorboard(enabled: bool, run_dir: Path) -> TensorBoardLog | None:
    """The run's TensorBoard log when enabled; fails at once (before any training) without the package."""
    return TensorBoardLog(run_dir / "tensorboard") if enabled else None
