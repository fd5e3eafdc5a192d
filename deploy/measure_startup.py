"""Measure what every deployment message pays before training starts: a fresh ClientApp process.

In deployment Flower 1.39 starts a new ``flwr-clientapp`` process per message, so module globals (the
executor's model cache included) never survive between rounds. This script times the same steps in fresh
interpreters: importing the ClientApp, partitioning the local data, building the model (+ LoRA) from the
local cache. Run it on each device class (Jetson, workstation, CPU box) to size ``round.timeout``:

    python deploy/measure_startup.py --model embedded:all-MiniLM-L6-v2 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

#: runs in a fresh interpreter, like flwr-clientapp; prints the timings as JSON
_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import client_app.app  # torch, transformers, peft, flwr: what the ClientApp module pulls in
t1 = time.perf_counter()
from client_app.executor import local_data
from fedcore.config import RunConfig
from fedcore.model import build_model
cfg = RunConfig.from_flat(json.loads(sys.argv[1]))
_, splits = local_data(cfg, {"partition-id": 0, "num-partitions": 2})
t2 = time.perf_counter()
build_model(cfg, splits.num_labels)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "data_s": t2 - t1, "model_s": t3 - t2, "total_s": t3 - t0}))
"""


def measure(run_config: dict[str, object], repeat: int) -> dict[str, float]:
    """Median seconds per step over `repeat` fresh processes (the first one warms the page cache)."""
    samples = []
    for _ in range(repeat + 1):
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, json.dumps(run_config)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    warm = samples[1:]
    return {key: statistics.median(s[key] for s in warm) for key in samples[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:all-MiniLM-L6-v2", help="model.name (path or embedded:)")
    parser.add_argument("--max-examples", type=int, default=300, help="data.max-examples (0 = all)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    config = {"model.name": args.model, "data.max-examples": args.max_examples, "tuning.lora-r": 4}
    timings = measure(config, args.repeat)
    print(json.dumps({"model": args.model, **{k: round(v, 2) for k, v in timings.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
