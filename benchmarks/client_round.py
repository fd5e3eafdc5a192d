"""Client cost per method: one real client round (memory, time, bytes) for each federated method.

Why: the methods differ in what a client must hold and compute (full model or a LEFF layout, all
weights or adapters, every block or a dropped subset). Process memory is only comparable when each
round runs in a fresh process, so the parent builds the server side (global model, the method's planner,
the plan and payload for partition 0, including LEFF's importance scoring and distillation, which stay
on the server) and writes them to a directory; a child process (``--child DIR``) builds the Flower
message, calls the real ClientApp, and reports what the round cost. Peak RSS is the kernel's high-water
mark of that child's address space (VmHWM; ru_maxrss would carry over the parent's peak, which LEFF's
server-side distillation inflates, through fork and exec); it includes the Python/torch runtime,
reported separately, and activation memory (bytes saved for backward, counted exactly) is reported next
to it.

    python benchmarks/client_round.py                 # MiniLM, writes benchmarks/results/client_round.*
    python benchmarks/client_round.py --model deep    # 24-block random BERT: client_round_deep24.*
    python benchmarks/client_round.py --model smollm2 --batch-size 8   # SmolLM2-135M classifier, 30 blocks
    python benchmarks/client_round.py --model mpnet --batch-size 8     # all-mpnet-base-v2, 12-block encoder
    python benchmarks/client_round.py --quick         # smoke test, writes benchmarks/results/quick/
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from benchlib import (
    MINILM,
    QUICK_RESULTS,
    RESULTS,
    command_line,
    header,
    machine,
    save_deep_model,
    table,
    write_results,
)
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file, save_file

from client_app.app import app as client_app
from client_app.executor import cached_model
from client_app.personal_store import NODE_PERSONAL_DIR
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.devices import DeviceProfile
from fedcore.core.plan import LayerPlan
from fedcore.data.splits import client_splits
from fedcore.methods.base import ClientInfo, ClientPlan
from fedcore.presets import preset_values
from server_app.federation import prepare, train_message

METHODS = ("fedavg", "fedlora", "fedbitfit", "droppeft", "leff")
NODE_ID = 1
CAPACITY = 0.5
SMOLLM2 = "embedded:smollm2-135m-instruct"
MPNET = "embedded:all-mpnet-base-v2"
PARTITION = 0
METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    "droppeft": {"drop.mode": "fixed", "drop.mean-rate": 0.5},
}


def peak_rss_mb() -> float:
    """This process's own RSS high-water mark; Linux keeps it per address space, so it starts at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: may include the parent


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def run_config(method: str, model_name: str, args: argparse.Namespace) -> RunConfig:
    flat: dict[str, Any] = {
        "method": method,
        "model.name": model_name,
        "train.local-steps": args.steps,
        "train.batch-size": args.batch_size,
        "clients.num-partitions": args.partitions,
        "leff.compression": args.compression,
        "leff.distill-steps": args.distill_steps,
        "leff.keep-protected": args.keep_protected,
        "leff.stand-in": args.stand_in,
        **METHOD_OVERRIDES.get(method, {}),
    }
    if model_name == SMOLLM2:
        flat["tuning.lora-targets"] = preset_values("smollm2")["tuning.lora-targets"]
    if args.quick:
        flat["eval.max-examples"] = 64
    return RunConfig.from_flat(flat)


def server_side(cfg: RunConfig, capacity: float, directory: Path) -> dict[str, Any]:
    """Build the server as the ServerApp does (``prepare``) and plan one client's round; write the plan,
    payload and configs for the child. The run directory ``prepare`` opens lands in ``directory``."""
    cfg = RunConfig.from_flat({**cfg.to_flat(), "output.dir": str(directory / "server")})
    directory.mkdir(parents=True)
    (directory / "client.json").write_text(json.dumps({"capacity": capacity}))
    began = time.perf_counter()
    state, _, _ = prepare(cfg)
    planned = state.planner.plan(1, [client_info(capacity)], state.global_state)[NODE_ID]
    server_s = time.perf_counter() - began
    plan, payload = planned.plan, planned.payload
    save_file(
        {name: t.detach().contiguous().clone() for name, t in payload.items()},
        directory / "payload.safetensors",
    )
    (directory / "run_config.json").write_text(json.dumps(cfg.to_flat()))
    (directory / "plan.json").write_text(json.dumps(plan.to_dict()))
    node_config = {
        wire.NODE_PARTITION_ID: PARTITION,
        wire.NODE_NUM_PARTITIONS: cfg.clients.num_partitions,
        NODE_PERSONAL_DIR: str(directory / "personal-layers"),
    }
    (directory / "node_config.json").write_text(json.dumps(node_config))
    return {
        "server_plan_s": server_s,
        "distill_s": state.planner.state_dict().get("distill_seconds", 0.0),
        "plan": plan.as_log()
        | {"block_sources": list(plan.block_sources), "train_groups": list(plan.train_groups)},
    }


def client_info(capacity: float) -> ClientInfo:
    """The measured client: partition 0 on a device of the given capacity."""
    return ClientInfo(
        node_id=NODE_ID,
        partition_id=PARTITION,
        profile=DeviceProfile("workstation", capacity=capacity).as_config(),
    )


def child(directory: Path, threads: int) -> None:
    """One client round in this (fresh) process, from the files the parent wrote; writes result.json."""
    if threads:
        torch.set_num_threads(threads)
    rss_runtime = rss_mb()
    flat = json.loads((directory / "run_config.json").read_text())
    plan_dict = json.loads((directory / "plan.json").read_text())
    node_config = json.loads((directory / "node_config.json").read_text())
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, NODE_ID, 1
    cfg = RunConfig.from_flat(flat)
    plan = LayerPlan.from_dict(plan_dict)
    planned = ClientPlan(plan, load_file(directory / "payload.safetensors"))
    capacity = json.loads((directory / "client.json").read_text())["capacity"]
    message = train_message(client_info(capacity), planned, cfg, "client-round", simulated=True)
    rss_before = rss_mb()
    began = time.perf_counter()
    reply = client_app(message, Context(1, NODE_ID, node_config, RecordDict(), {}))
    wall = time.perf_counter() - began
    peak = peak_rss_mb()
    if reply.has_error():
        raise RuntimeError(f"client round failed: {reply.error.reason}")
    metrics = dict(reply.content.metric_records[wire.TRAIN_METRICS])
    num_labels = client_splits(
        cfg.data, cfg.model.task, cfg.seed, PARTITION, cfg.clients.num_partitions
    ).num_labels
    # the model the round used
    model = cached_model(cfg, num_labels, len(plan.block_sources), plan.frozen_dtype).model
    result = {
        "rss_runtime_mb": rss_runtime,
        "rss_before_round_mb": rss_before,
        "peak_rss_mb": peak,
        "round_wall_s": wall,
        "params_held": sum(p.numel() for p in model.parameters()),
        "params_trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "metrics": metrics,
    }
    (directory / "result.json").write_text(json.dumps(result, indent=2))


def measure(method: str, model_name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    cfg = run_config(method, model_name, args)
    directory = root / method
    server = server_side(cfg, args.capacity, directory)
    gc.collect()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(directory),
        "--threads",
        str(args.threads),
    ]
    env = dict(os.environ)
    if args.mmap_threshold_mb:
        # a fixed threshold also stops glibc from raising it, so freed large tensors go back to the OS
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold_mb * 2**20)
    print(f"[{method}] server side done in {server['server_plan_s']:.1f} s; client round...", flush=True)
    subprocess.run(command, check=True, env=env)
    result = json.loads((directory / "result.json").read_text())
    return {"method": method, "tuning": cfg.tuning_mode, **server, **result}


def allocator(mmap_threshold_mb: int) -> str:
    if mmap_threshold_mb:
        return f"glibc, MALLOC_MMAP_THRESHOLD_={mmap_threshold_mb} MB (freed large tensors go back to the OS)"
    return "glibc defaults (freed memory may stay in the process and count in RSS)"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def render(results: list[dict[str, Any]]) -> str:
    round_rows = []
    memory_rows = []
    for r in results:
        m = r["metrics"]
        round_rows.append(
            [
                r["method"],
                r["tuning"],
                int(m["model_blocks"]),
                f"{r['params_held'] / 1e6:.2f}",
                f"{r['params_trained'] / 1e6:.3f}",
                f"{m['bytes_down'] / 2**20:.2f}",
                f"{m['bytes_up'] / 2**20:.2f}",
                m["compute_time_s"],
                m["compute_time_s"] / m["steps"],
                f"{m['mean_active_blocks']:.2f}",
                r["round_wall_s"],
                r["server_plan_s"],
                r["distill_s"],
            ]
        )
        memory_rows.append(
            [
                r["method"],
                r["rss_runtime_mb"],
                r["rss_before_round_mb"],
                r["peak_rss_mb"],
                r["peak_rss_mb"] - r["rss_runtime_mb"],
                m["peak_rss_mb"],
                m["activation_mb"],
            ]
        )
    parts = [
        "### Round",
        "",
        table(
            [
                "method",
                "tuning",
                "blocks held",
                "params held M",
                "trained M",
                "MB down",
                "MB up",
                "compute s",
                "s/step",
                "blocks run/step",
                "round wall s",
                "server plan s",
                "of it distill s",
            ],
            round_rows,
        ),
        "",
        "### Memory (MB)",
        "",
        table(
            [
                "method",
                "runtime RSS",
                "RSS before round",
                "peak RSS",
                "peak - runtime",
                "train-loop RSS (sampled)",
                "activations",
            ],
            memory_rows,
        ),
        "",
    ]
    by_method = {r["method"]: r for r in results}
    bases = [b for b in ("fedavg", "fedlora") if b in by_method]
    if bases:
        parts += ["### Ratios", "", ratio_table(results, [by_method[b] for b in bases]), ""]
    if "leff" in by_method:
        parts += goal_lines(by_method)
    return "\n".join(parts)


def quantities(r: dict[str, Any]) -> dict[str, float]:
    m = r["metrics"]
    return {
        "peak RSS": r["peak_rss_mb"],
        "peak - runtime": r["peak_rss_mb"] - r["rss_runtime_mb"],
        "activations": m["activation_mb"],
        "s/step": m["compute_time_s"] / m["steps"],
        "MB down": m["bytes_down"],
    }


def ratio_table(results: list[dict[str, Any]], bases: list[dict[str, Any]]) -> str:
    names = list(quantities(results[0]))
    columns = ["method", *(f"{n} / {b['method']}" for b in bases for n in names)]
    rows = [
        [r["method"], *(ratio(quantities(r)[n], quantities(b)[n]) for b in bases for n in names)]
        for r in results
    ]
    return table(columns, rows)


def goal_lines(by_method: dict[str, dict[str, Any]]) -> list[str]:
    """The check the project states: LEFF peak memory <= 40% of FedAvg-full and <= 60% of FedLoRA."""
    leff = quantities(by_method["leff"])
    lines = ["### Goal check: LEFF memory <= 0.40 x FedAvg and <= 0.60 x FedLoRA", ""]
    for base, goal in (("fedavg", 0.40), ("fedlora", 0.60)):
        if base not in by_method:
            continue
        other = quantities(by_method[base])
        for name in ("peak RSS", "peak - runtime", "activations"):
            value = leff[name] / other[name]
            verdict = "met" if value <= goal else "NOT met"
            lines.append(f"- {name}: LEFF / {base} = {value:.2f} (goal <= {goal:.2f}): {verdict}")
    return [*lines, ""]


NOTES = """\
How to read: one client round of `train.local-steps` steps on partition 0, each method in a fresh
process. `runtime RSS` is the child's RSS after importing torch/transformers/Flower (the same for every
method); `RSS before round` adds the received message; `peak RSS` is the kernel's high-water mark of
the child's own address space (VmHWM), so `peak - runtime` is what the round itself needed: model,
optimizer state, gradients, activations, payload copies. `train-loop RSS` is the project's own sampled
peak during `train_plan` only. `activations` is the largest per-step total of bytes saved for backward (exact,
allocator-independent). `compute s` is the training loop; `round wall s` adds model build, data loading
and evaluation. LEFF's server work (block importance and distillation of the students) is in `server
plan s` and never in the client's memory. Ratios below 1 mean cheaper than the base method.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--model", choices=("minilm", "deep", "smollm2", "mpnet"), default="minilm")
    parser.add_argument("--deep-layers", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10, help="local steps of the round (K)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--capacity", type=float, default=CAPACITY, help="LEFF: share of blocks trained")
    parser.add_argument("--compression", type=float, default=0.5, help="LEFF: student depth ratio")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the client (0 = default)")
    parser.add_argument(
        "--mmap-threshold-mb",
        type=int,
        default=0,
        help="client MALLOC_MMAP_THRESHOLD_ in MB (0 = glibc default, which keeps freed memory)",
    )
    parser.add_argument("--distill-steps", type=int, default=20, help="LEFF: server distillation steps")
    parser.add_argument(
        "--keep-protected", action="store_true", help="LEFF: students keep protected blocks whole"
    )
    parser.add_argument(
        "--stand-in",
        choices=("students", "bfloat16"),
        default="students",
        help="LEFF: distilled students or the frozen blocks in bfloat16 (leff.stand-in)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 steps, 2 distillation steps")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    if args.quick:
        args.steps, args.distill_steps = 2, 2
    info = machine()
    command = command_line()
    methods = [m.strip() for m in args.methods.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="fedlayer-bench-") as tmp:
        root = Path(tmp)
        if args.model == "deep":
            model_name = str(save_deep_model(root / "model", args.deep_layers))
            label, name = f"BERT-{args.deep_layers} (random init)", f"client_round_deep{args.deep_layers}"
        elif args.model == "smollm2":
            model_name, label = SMOLLM2, "SmolLM2-135M-Instruct classifier (30 blocks)"
            name = "client_round_smollm2"
        elif args.model == "mpnet":
            model_name, label, name = MPNET, "all-mpnet-base-v2 classifier (12 blocks)", "client_round_mpnet"
        else:
            model_name, label, name = MINILM, "MiniLM-L6 (all-MiniLM-L6-v2)", "client_round"
        if args.capacity != CAPACITY:
            name += f"_capacity{args.capacity:g}"
        if args.mmap_threshold_mb:
            name += f"_mmap{args.mmap_threshold_mb}mb"
        if args.keep_protected:
            name += "_protected"
        if args.stand_in != "students":
            name += f"_{args.stand_in}"
        for method in methods:
            results.append(measure(method, model_name, args, root))
    body = render(results)
    print("\n" + body)
    markdown = "\n".join(
        [
            header(f"Client round cost per method: {label}", info, command, args.quick),
            f"One round of {args.steps} steps, batch {args.batch_size}, partition {PARTITION} of "
            f"{args.partitions} (Rotten Tomatoes); droppeft: fixed drop, mean rate 0.5 (incremental shape), "
            f"personal share 0.25; leff: capacity {args.capacity}, compression {args.compression}, "
            f"{args.distill_steps} distillation steps"
            f"{', students keep protected blocks whole' if args.keep_protected else ''}"
            f"{', frozen blocks in bfloat16 instead of students' if args.stand_in == 'bfloat16' else ''}. "
            f"Allocator: {allocator(args.mmap_threshold_mb)}.",
            "",
            body,
            NOTES,
        ]
    )
    data = {"machine": info, "command": command, "args": {k: str(v) for k, v in vars(args).items()}}
    data["model"] = label
    data["results"] = results
    md, js = write_results(name, args.out or (QUICK_RESULTS if args.quick else RESULTS), markdown, data)
    print(f"\nwrote {md} and {js}")


if __name__ == "__main__":
    main()
