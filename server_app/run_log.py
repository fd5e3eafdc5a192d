"""The run directory: resolved config, metrics.jsonl, summary.json and the final model.

Every file is written via a temporary file and an atomic rename (metrics.jsonl is appended line by
line and flushed), so an interrupted run leaves complete files, never half-written ones.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.core.files import write_atomic, write_json_atomic


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place; the previous version is removed only afterwards."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def new_run_dir(parent: str, method: str) -> Path:
    root = Path(parent).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        suffix = f"-{attempt}" if attempt else ""
        path = root / f"{stamp}-{method}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a fresh run directory under {root}")


class RunLog:
    def __init__(self, run_dir: Path, flat_config: dict[str, Any]) -> None:
        self.dir = run_dir
        write_json_atomic(run_dir / "config.json", flat_config)
        self._metrics = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def row(self, row: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(row, sort_keys=True, default=float) + "\n")
        self._metrics.flush()

    def truncate_after(self, round_number: int) -> None:
        """Drop rows of rounds after a checkpoint (written before a crash, then redone on resume)."""
        self._metrics.close()
        path = self.dir / "metrics.jsonl"
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("round", 0) <= round_number
        ]
        write_atomic(path, "".join(f"{line}\n" for line in kept))
        self._metrics = path.open("a", encoding="utf-8")

    def summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.dir / "summary.json", summary)

    def save_model(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Path:
        """save_pretrained (an adapter for LoRA, the full model otherwise), swapped in atomically."""
        final = self.dir / "model"
        tmp = self.dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, final)
        return final

    def close(self) -> None:
        self._metrics.close()
