"""Measure what every deployment message pays before its work starts: a fresh ClientApp process.

In deployment Flower 1.39 starts a new ``flwr-clientapp`` process per message, so module globals (the
executor's model cache included) never survive between rounds. This script times both kinds of message in
fresh interpreters, from process start:

- the start-up info query: load the ClientApp, answer (it must not import torch, transformers, peft or
  datasets; the modules it did import are listed);
- a training message: load the ClientApp and the training stack, partition the local data, build the
  model (+ LoRA) from the local cache: the moment training could start.

Run it on each device class (Jetson, workstation, CPU box) to size ``round.timeout``:

    python deploy/measure_startup.py --model embedded:all-MiniLM-L6-v2 --repeat 3 [--out results/startup]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "datasets")

#: a fresh interpreter answering the info query, like flwr-clientapp; prints its timings as JSON
_INFO_PROBE = f"""
import json, sys, time
t0 = time.perf_counter()
import client_app.app  # what flwr-clientapp loads for every message
from client_app.info import node_info
from fedcore.config import RunConfig
t1 = time.perf_counter()
node_info({{"partition-id": 0, "num-partitions": 2}}, RunConfig.from_flat(json.loads(sys.argv[1])))
t2 = time.perf_counter()
heavy = [name for name in {HEAVY!r} if name in sys.modules]
print(json.dumps({{"import_s": t1 - t0, "answer_s": t2 - t0, "heavy_modules": heavy}}))
"""

#: a fresh interpreter getting ready to train, like flwr-clientapp; prints its timings as JSON
_TRAIN_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import client_app.app
import client_app.executor  # what the train handler imports
from fedcore.config import RunConfig
from fedcore.data.sources import data_source
from fedcore.model import build_model
t1 = time.perf_counter()
cfg = RunConfig.from_flat(json.loads(sys.argv[1]))
splits = data_source(cfg, {"partition-id": 0, "num-partitions": 2}).splits(cfg)
t2 = time.perf_counter()
build_model(cfg, splits.num_labels)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "data_s": t2 - t1, "model_s": t3 - t2, "ready_s": t3 - t0}))
"""


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sample(probe: str, run_config: dict[str, object]) -> dict[str, Any]:
    """One fresh process; ``process_s`` is from spawning it to its exit (interpreter start included), and
    ``cpu_s`` the CPU seconds it used, which other users' load on a shared machine changes far less."""
    began, cpu_before = time.perf_counter(), _children_cpu_s()
    out = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(run_config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    process_s, cpu_s = time.perf_counter() - began, _children_cpu_s() - cpu_before
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": process_s, "cpu_s": cpu_s}


def measure(probe: str, run_config: dict[str, object], repeat: int) -> dict[str, Any]:
    """Median seconds per step over `repeat` fresh processes (the first one warms the page cache)."""
    samples = [_sample(probe, run_config) for _ in range(repeat + 1)][1:]
    return {
        key: statistics.median(s[key] for s in samples) if isinstance(value, float) else value
        for key, value in samples[-1].items()
    }


def _benchlib() -> Any:
    """benchmarks/benchlib.py: the machine header and result files every benchmark writes."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import benchlib

    return benchlib


def write_results(
    path: Path, model: str, results: dict[str, dict[str, Any]], repeat: int, facts: dict[str, Any]
) -> None:
    """``path``.md and ``path``.json, with the machine (``facts``, taken before measuring) and command."""
    benchlib = _benchlib()
    info, train = results["info"], results["train"]
    command = " ".join(["python", *sys.argv])
    rows = [
        ["info query", info["import_s"], "-", "-", info["answer_s"], info["process_s"], info["cpu_s"]],
        ["training message", train["import_s"], train["data_s"], train["model_s"], train["ready_s"]]
        + [train["process_s"], train["cpu_s"]],
    ]
    markdown = "\n".join(
        [
            benchlib.header(f"ClientApp start-up per message: {model}", facts, command, quick=False),
            f"Median of {repeat} fresh processes after one warm-up. Seconds from the first import "
            "(`process s`: from spawning the interpreter to its exit, interpreter start included; `CPU s`: "
            "the CPU seconds that process used). "
            f"Heavy modules the info query imported: {', '.join(info['heavy_modules']) or 'none'}.",
            "",
            benchlib.table(
                ["message", "import s", "data s", "model s", "answered / ready s", "process s", "CPU s"], rows
            ),
        ]
    )
    data = {"machine": facts, "command": command, "model": model, "repeat": repeat, **results}
    benchlib.write_results(path.name, path.parent, markdown, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:all-MiniLM-L6-v2", help="model.name (path or embedded:)")
    parser.add_argument("--max-examples", type=int, default=300, help="data.max-examples (0 = all)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    facts = _benchlib().machine() if args.out else {}
    config = {"model.name": args.model, "data.max-examples": args.max_examples, "tuning.lora-r": 4}
    results = {
        "info": measure(_INFO_PROBE, config, args.repeat),
        "train": measure(_TRAIN_PROBE, config, args.repeat),
    }
    rounded = {
        kind: {k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()}
        for kind, timings in results.items()
    }
    print(json.dumps({"model": args.model, **rounded}))
    if args.out:
        write_results(args.out, args.model, results, args.repeat, facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
