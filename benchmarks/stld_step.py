"""Layer-dropout micro-benchmark: training-step time and activation memory vs the mean drop rate p.

Why: STLD's promise is that a step with mean drop rate p costs about 1 - p*f of a full step, where f is
the share of the step spent in transformer blocks (the rest is embeddings, head, loss and optimizer).
This measures the speedup next to that ideal, and the activation memory saved, on the real MiniLM (6
blocks) and on a 24-block model of the same config (random weights: timing does not depend on them).

Each step is forward + backward + AdamW with the project's own pieces: the plan from the method's planner
(``drop.mode=fixed``, uniform shape), its parameters from ``trained_parameters``, per-step masks from
``sample_active_blocks`` (seeded as ``train_plan`` seeds them), ``only_blocks`` and ``ActivationMeter``.
``train_plan`` itself times only whole rounds, so the step loop is spelled out here to time single
steps of all settings round-robin on the same batches (drift and batch length cancel out of the ratios);
a short ``train_plan`` round per p is run afterwards as a cross-check of the loop.

    python benchmarks/stld_step.py            # full run, writes benchmarks/results/stld_step.{md,json}
    python benchmarks/stld_step.py --quick    # smoke test, writes benchmarks/results/quick/
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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
from datasets import Dataset
from torch import nn

from fedcore.config import RunConfig
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.data.batching import Batch, make_batches
from fedcore.data.splits import server_splits
from fedcore.mechanisms.layer_dropout import only_blocks, sample_active_blocks
from fedcore.methods.base import ClientInfo
from fedcore.methods.registry import make_planner
from fedcore.model import build_model
from fedcore.training.memory import ActivationMeter
from fedcore.training.train import train_plan, trained_parameters

RATES = (0.0, 0.25, 0.5, 0.75)
ONE_BLOCK = "1 block"
METHOD_OF_TUNING = {"lora": "fedlora", "full": "fedavg"}


@dataclasses.dataclass
class Setting:
    """One column of the round-robin: a drop rate (masks sampled per step) or a fixed single block."""

    name: str
    plan: LayerPlan
    fixed_active: list[int] | None = None
    generator: torch.Generator = dataclasses.field(default_factory=torch.Generator)
    times: list[float] = dataclasses.field(default_factory=list)
    cpu_times: list[float] = dataclasses.field(default_factory=list)
    activation_mb: list[float] = dataclasses.field(default_factory=list)
    active_blocks: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.generator.manual_seed(self.plan.seed)  # as train_plan seeds its mask generator

    def next_active(self, num_blocks: int) -> list[int]:
        if self.fixed_active is not None:
            return self.fixed_active
        if self.plan.drop_rates:
            return sample_active_blocks(self.plan.drop_rates, self.generator)
        return list(range(num_blocks))


def run_config(model_name: str, tuning: str, rate: float, max_length: int, batch_size: int) -> RunConfig:
    return RunConfig.from_flat(
        {
            "method": METHOD_OF_TUNING[tuning],
            "model.name": model_name,
            "model.max-length": max_length,
            "train.batch-size": batch_size,
            "drop.mode": "fixed",
            "drop.mean-rate": rate,
            "drop.shape": "uniform",
        }
    )


def step(
    model: nn.Module,
    batch: Batch,
    active: list[int],
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    clip_norm: float,
) -> tuple[float, float, float]:
    """One training step exactly as in train_plan's loop; returns (wall s, CPU s, activation MB).

    CPU time (all threads) is kept next to wall time: on a shared machine it is the steadier of the two.
    """
    meter = ActivationMeter(model)
    began, began_cpu = time.perf_counter(), time.process_time()
    with meter.step(), only_blocks(model, active):
        loss = model(**batch).loss
    loss.backward()
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()
    return time.perf_counter() - began, time.process_time() - began_cpu, meter.peak_mb


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=4)[int(q * 4) - 1] if len(values) > 1 else values[0]


def benchmark(
    label: str, model_name: str, tuning: str, args: argparse.Namespace, texts: Dataset
) -> dict[str, Any]:
    """All settings of one model and tuning mode, interleaved step by step on the same batches."""
    configs = {p: run_config(model_name, tuning, p, args.max_length, args.batch_size) for p in RATES}
    base = configs[0.0]
    model, tokenizer = build_model(base, num_labels=2)
    batches = make_batches(texts, tokenizer, "seq-cls", args.max_length, args.batch_size, base.seed)
    layer_map = LayerMap(model)
    num_blocks = layer_map.num_blocks
    client = ClientInfo(node_id=0, partition_id=0)
    plans = {
        p: make_planner(cfg, model, tokenizer).plan(1, [client], {})[0].plan for p, cfg in configs.items()
    }
    settings = [Setting(f"p={p}", plans[p]) for p in RATES]
    settings.append(Setting(ONE_BLOCK, plans[0.0], fixed_active=[0]))
    params = list(trained_parameters(model, layer_map, plans[0.0]).values())
    optimizer = torch.optim.AdamW(params, lr=base.learning_rate, weight_decay=base.train.weight_decay)
    model.train()
    print(f"\n[{label}] {num_blocks} blocks, {sum(p.numel() for p in params) / 1e6:.2f} M trained parameters")
    began = time.perf_counter()
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        for s in settings[i % len(settings) :] + settings[: i % len(settings)]:
            active = s.next_active(num_blocks)
            seconds, cpu, mb = step(model, batch, active, params, optimizer, base.train.clip_norm)
            if i >= args.warmup:
                s.times.append(seconds)
                s.cpu_times.append(cpu)
                s.activation_mb.append(mb)
                s.active_blocks.append(len(active))
        elapsed = time.perf_counter() - began
        print(f"  round-robin cycle {i + 1}/{args.warmup + args.steps} ({elapsed:.0f} s)", flush=True)
    del optimizer  # train_plan brings its own: free this one's state first
    checks = {}
    if args.check_steps:
        for p in RATES:
            plan = dataclasses.replace(plans[p], steps=args.check_steps)
            metrics = train_plan(
                model, batches[: args.check_steps], plan, clip_norm=base.train.clip_norm
            ).metrics
            checks[p] = metrics["compute_time_s"] / args.check_steps
    return summarise(label, tuning, num_blocks, settings, checks)


def ratio_or_none(numerator: float, denominator: float) -> float | None:
    """None where timing noise made f so large that the ideal is undefined (shown as n/a)."""
    return numerator / denominator if denominator > 0 else None


def summarise(
    label: str, tuning: str, num_blocks: int, settings: list[Setting], checks: dict[float, float]
) -> dict[str, Any]:
    """f from the all-blocks and one-block medians, then speedup vs ideal and activation ratios per p."""
    median = {s.name: statistics.median(s.times) for s in settings}
    cpu_full = statistics.median(settings[0].cpu_times)
    t_full, t_one = median["p=0.0"], median[ONE_BLOCK]
    per_block = (t_full - t_one) / (num_blocks - 1)
    f = num_blocks * per_block / t_full
    act0 = statistics.mean(settings[0].activation_mb)
    rows = []
    for p, s in zip(RATES, settings[: len(RATES)], strict=True):
        mean_active = statistics.mean(s.active_blocks)
        speedup = t_full / median[s.name]
        ideal = ratio_or_none(1.0, 1 - p * f)
        ideal_sampled = ratio_or_none(t_full, t_full - per_block * (num_blocks - mean_active))
        act = statistics.mean(s.activation_mb)
        rows.append(
            {
                "p": p,
                "mean_active_blocks": mean_active,
                "median_step_s": median[s.name],
                "iqr_over_median": (quantile(s.times, 0.75) - quantile(s.times, 0.25)) / median[s.name],
                "speedup": speedup,
                "cpu_speedup": cpu_full / statistics.median(s.cpu_times),
                "ideal_speedup": ideal,
                "measured_over_ideal": speedup / ideal if ideal else None,
                # the ideal for the blocks actually sampled (at least one block always runs)
                "ideal_speedup_sampled": ideal_sampled,
                "activation_mb_mean": act,
                "activation_mb_peak": max(s.activation_mb),
                "activation_ratio": act / act0,
                "train_plan_step_s": checks.get(p),
            }
        )
    return {
        "label": label,
        "tuning": tuning,
        "num_blocks": num_blocks,
        "steps_timed": len(settings[0].times),
        "median_one_block_s": t_one,
        "per_block_s": per_block,
        "block_share_f": f,
        "rows": rows,
        "raw": {
            s.name: {"times_s": s.times, "cpu_times_s": s.cpu_times, "activation_mb": s.activation_mb}
            for s in settings
        },
    }


def times_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render(result: dict[str, Any]) -> str:
    columns = [
        "p",
        "active blocks",
        "median s/step",
        "IQR/med",
        "speedup",
        "CPU-time speedup",
        "ideal 1/(1-pf)",
        "meas/ideal",
        "ideal (sampled)",
        "act MB",
        "act ratio",
        "act MB peak",
        "train_plan s/step",
    ]
    rows = [
        [
            f"{r['p']:.2f}",
            f"{r['mean_active_blocks']:.2f}",
            r["median_step_s"],
            f"{r['iqr_over_median']:.0%}",
            f"{r['speedup']:.2f}x",
            f"{r['cpu_speedup']:.2f}x",
            times_or_na(r["ideal_speedup"]),
            "n/a" if r["measured_over_ideal"] is None else f"{r['measured_over_ideal']:.2f}",
            times_or_na(r["ideal_speedup_sampled"]),
            r["activation_mb_mean"],
            f"{r['activation_ratio']:.2f}",
            r["activation_mb_peak"],
            "-" if r["train_plan_step_s"] is None else r["train_plan_step_s"],
        ]
        for r in result["rows"]
    ]
    return "\n".join(
        [
            f"## {result['label']} ({result['num_blocks']} blocks, {result['tuning']} tuning)",
            "",
            f"{result['steps_timed']} timed steps per setting; one block active: "
            f"{result['median_one_block_s']:.3f} s/step; per block: {result['per_block_s']:.3f} s; "
            f"block share f = {result['block_share_f']:.3f}",
            "",
            table(columns, rows),
            "",
        ]
    )


NOTES = """\
How to read: `speedup` = median step time at p=0 / at p (same batches, steps interleaved round-robin).
`ideal 1/(1-pf)` is what dropping a share p of the block time would give, with f = L * per-block time /
full step time and per-block time = (t(all blocks) - t(1 block)) / (L - 1). `meas/ideal` near 1 means
dropped blocks cost nothing; below 1 means overhead that does not shrink with depth. `ideal (sampled)`
uses the mean number of blocks actually run (at least one block always runs, which matters at p=0.75
with few blocks). `CPU-time speedup` is the same ratio of process CPU time (all threads): on a quiet
machine it matches `speedup`; on a shared one it is the steadier. `act MB` is the mean per step of the
bytes saved for backward (ActivationMeter, exact); `act ratio` is relative to p=0. `train_plan s/step`
is a short `train_plan` round per p (its own AdamW, not interleaved): it should agree with the median
loop step, confirming the loop is the real training step.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        default="minilm:lora,deep:lora,deep:full",
        help="comma-separated model:tuning pairs; model minilm or deep, tuning lora or full",
    )
    parser.add_argument("--deep-layers", type=int, default=24)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per setting first")
    parser.add_argument("--check-steps", type=int, default=3, help="steps of the train_plan cross-check")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 steps, 1 warm-up, 1 check step")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.check_steps = 3, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    command = command_line()
    pool = server_splits(RunConfig().data, "seq-cls", 0).pool
    needed = min(len(pool), args.batch_size * (args.warmup + args.steps))
    texts = pool.select(range(needed))
    results = []
    with tempfile.TemporaryDirectory(prefix="fedlayer-bench-") as tmp:
        deep_dir: str | None = None
        for spec in args.configs.split(","):
            model_key, tuning = spec.strip().split(":")
            if model_key == "deep" and deep_dir is None:
                deep_dir = str(save_deep_model(Path(tmp) / "deep", args.deep_layers))
            name = MINILM if model_key == "minilm" else deep_dir
            label = "MiniLM-L6" if model_key == "minilm" else f"BERT-{args.deep_layers} (random)"
            result = benchmark(f"{label} {tuning}", name, tuning, args, texts)
            print("\n" + render(result))
            results.append(result)
    title = "STLD step benchmark: step time and activation memory vs layer-drop rate"
    markdown = "\n".join(
        [
            header(title, info, command, args.quick),
            f"Batch {args.batch_size} Rotten Tomatoes texts, max_length {args.max_length}, uniform drop "
            "shape, forward + backward + AdamW (gradient clipping as in training).",
            "",
            *(render(r) for r in results),
            NOTES,
        ]
    )
    data = {"machine": info, "command": command, "args": {k: str(v) for k, v in vars(args).items()}}
    data["results"] = results
    md, js = write_results(
        "stld_step", args.out or (QUICK_RESULTS if args.quick else RESULTS), markdown, data
    )
    print(f"\nwrote {md} and {js}")


if __name__ == "__main__":
    main()
