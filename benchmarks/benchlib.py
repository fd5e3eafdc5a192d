"""What every benchmark shares: the machine header, result files, and the models under test.

Speed and memory numbers mean nothing without the machine and the exact command, so every result file
starts with both; the numbers themselves are only compared side by side within one run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel

from fedcore.data import assets

MINILM = "embedded:all-MiniLM-L6-v2"
RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = RESULTS / "quick"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Facts that decide the numbers (and the load average, which says whether the CPU was shared)."""
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def command_line() -> str:
    return shlex.join(["python", *sys.argv])


def header(title: str, info: dict[str, Any], command: str, quick: bool) -> str:
    lines = [f"# {title}", ""]
    if quick:
        lines += ["**QUICK smoke-test run (tiny sizes): checks the script works; do not cite.**", ""]
    lines += [
        f"- machine: {info['cpu']}, {info['logical_cores']} logical cores ({info['usable_cores']} usable), "
        f"{info['ram_gb']} GiB RAM, GPU: {info['gpu']}",
        f"- software: torch {info['torch']} ({info['torch_threads']} threads), Python {info['python']}, "
        f"{info['platform']}",
        f"- date: {info['date_utc']}; load average at start / end: {info['load_average_at_start']} / "
        f"{[round(x, 2) for x in os.getloadavg()]}",
        f"- command: `{command}`",
        "",
    ]
    return "\n".join(lines)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; it prints readably on a terminal too."""
    cells = [[str(c) for c in columns], *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_results(name: str, out_dir: Path, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{name}.md", out_dir / f"{name}.json"
    md.write_text(markdown.rstrip() + "\n")
    js.write_text(json.dumps(data, indent=2) + "\n")
    return md, js


def save_deep_model(directory: Path, layers: int) -> Path:
    """MiniLM's BERT config at another depth, random weights, with MiniLM's tokenizer, loadable by path.

    Step time does not depend on the weights, so a random deep model stands in for a bigger checkpoint;
    saving it lets the server and a client subprocess both load it as ``model.name=<directory>``.
    """
    source = assets.resolve(MINILM)
    config = BertConfig.from_pretrained(source)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def timed_step(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    blocks: AbstractContextManager,
) -> float:
    """One training step (gradient clipping at 1.0) with ``blocks`` (the blocks that run) in force; its
    wall seconds."""
    model.train()
    began = time.perf_counter()
    with blocks:
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - began
