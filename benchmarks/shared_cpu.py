"""Training step time of the default model alone and beside one busy process, by the client's thread setting.

On a shared machine a client's torch threads lose a core to any other busy process. With OpenMP's default
wait policy the remaining threads spin at every barrier, waiting for the preempted one. This script times
training steps of the default run's model (MiniLM with the default LoRA, the default batch and sequence
length, random tokens) in fresh processes, since the wait policy must be set before torch loads:

- ``torch default``: what a client did before: as many threads as its CPU share, OpenMP's default wait;
- ``client setting``: ``client_app.cpu_share`` as the ClientApp applies it (passive wait, share sized);
- ``1 thread, passive``: for comparison, one thread whatever the share.

Each is timed alone and beside one busy Python loop at the same priority, interleaved, ``--repeat`` times.
No Flower: only the threads and the step.

    python benchmarks/shared_cpu.py [--steps 6] [--repeat 3]   # -> benchmarks/results/shared_cpu.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchlib import RESULTS, command_line, header, machine, table, write_results

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("torch default", "client setting", "1 thread, passive")
CONDITIONS = ("alone", "beside a busy process")

#: a fresh process: apply one variant's thread setting, build the default model, time steps; prints JSON
_STEPS = """
import json, os, sys
variant, steps = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, "benchmarks")
from client_app.cpu_share import cpu_share, use_cpu_share, wait_passively
if variant != "torch default":
    wait_passively()
if variant == "1 thread, passive":
    os.environ["OMP_NUM_THREADS"] = "1"
import torch
from contextlib import nullcontext
from benchlib import timed_step
from fedcore.config import RunConfig
from fedcore.model import build_model
if variant == "torch default":
    torch.set_num_threads(cpu_share())  # the share, as Ray's OMP_NUM_THREADS gave it
else:
    use_cpu_share()
cfg = RunConfig()
model, _ = build_model(cfg, 2)
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=cfg.train.lr)
generator = torch.Generator().manual_seed(0)
shape = (cfg.train.batch_size, cfg.model.max_length)
batch = {
    "input_ids": torch.randint(1000, 20000, shape, generator=generator),
    "attention_mask": torch.ones(shape, dtype=torch.long),
    "labels": torch.randint(0, 2, (shape[0],), generator=generator),
}
timed_step(model, params, optimizer, batch, nullcontext())  # warm-up
seconds = [timed_step(model, params, optimizer, batch, nullcontext()) for _ in range(steps)]
wait = os.environ.get("OMP_WAIT_POLICY", "default")
print(json.dumps({"seconds": sum(seconds) / steps, "threads": torch.get_num_threads(), "wait": wait}))
"""


def _child_env() -> dict[str, str]:
    """This environment without the thread settings under test (the variants set their own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def sample(variant: str, steps: int, busy: bool) -> dict[str, float | int | str]:
    """Mean seconds per step of one fresh process; with ``busy``, a busy loop runs beside it throughout."""
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _STEPS, variant, str(steps)],
            cwd=REPO_ROOT,
            env=_child_env(),
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process (after one warm-up)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    info = machine()
    samples: dict[str, dict[str, list[dict]]] = {v: {c: [] for c in CONDITIONS} for v in VARIANTS}
    for _ in range(args.repeat):
        for condition in CONDITIONS:
            for variant in VARIANTS:
                result = sample(variant, args.steps, busy=condition != "alone")
                samples[variant][condition].append(result)
                print(variant, condition, result, flush=True)
    rows = []
    for variant in VARIANTS:
        alone, busy = (statistics.median(s["seconds"] for s in samples[variant][c]) for c in CONDITIONS)
        first = samples[variant]["alone"][0]
        rows.append([variant, first["threads"], first["wait"], alone, busy, busy / alone])
    markdown = header("Training steps alone and beside a busy process", info, command_line(), quick=False)
    markdown += (
        f"\nSeconds per training step of the default model (MiniLM, default LoRA, batch and length of the "
        f"default run), mean of {args.steps} steps after a warm-up in a fresh process, median of "
        f"{args.repeat} processes per cell, variants and conditions interleaved. The busy process is one "
        "Python loop at the benchmark's own priority. The machine is shared with other users' processes "
        "(see the load average above): the cells were measured under the same sharing, side by side.\n\n"
    )
    columns = ["threads setting", "threads", "OpenMP wait", "alone s", "beside busy s", "x alone"]
    markdown += table(columns, rows)
    write_results("shared_cpu", RESULTS, markdown, {"machine": info, "command": command_line(), **samples})
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
