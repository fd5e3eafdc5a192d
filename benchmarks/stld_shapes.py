"""Which blocks can a pretrained decoder skip? Block-removal sensitivity and STLD learning curves per
drop shape, on the 30-block SmolLM2-135M.

Part 1 (sensitivity): the pretrained causal LM's loss on proxy headlines with ONE block removed, for each
block: a block whose removal breaks the model should not be dropped while fine-tuning either.
Part 2 (learning): one client, LoRA on q/k/v/o, constant lr 1e-3, batch 16 x 32 tokens, the 5-topic BBC
News classifier (the paper-cls task, IID), full-depth accuracy on the testbed's server validation split
every 20 steps, for full depth and mean drop rate 0.3 spread three ways: uniform, incremental (p_l ~ l+1, the
stochastic-depth rule) and ``sensitivity`` (rates spread by block removal sensitivity, measured without
labels on proxy text: ``fedcore.sensitivity``).

    python benchmarks/stld_shapes.py              # -> benchmarks/results/stld_shapes.{md,json}
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from benchlib import RESULTS, command_line, header, machine, table, timed_step, write_results
from datasets import Dataset

from fedcore.config import RunConfig
from fedcore.core.layers import LayerMap
from fedcore.data.batching import make_batches
from fedcore.data.proxy import load_proxy_texts
from fedcore.data.splits import server_splits
from fedcore.mechanisms.block_sensitivity import block_sensitivity
from fedcore.mechanisms.layer_dropout import (
    DropConfig,
    only_blocks,
    sample_active_blocks,
    sensitivity_weights,
    spread_rate,
)
from fedcore.model import build_model
from fedcore.training.evaluate import evaluate

RATE = 0.3


def sensitivity_rates(mean: float) -> tuple[tuple[float, ...], list[float]]:
    """The classifier's label-free block sensitivity on 64 proxy headlines, and the rates it gives."""
    cfg = RunConfig.from_flat({"preset": "paper-cls", "method": "fedlora", "model.max-length": 32})
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg, num_labels=5)
    texts = load_proxy_texts(cfg.proxy.name, 64, 0)
    scores = block_sensitivity(
        model, make_batches(Dataset.from_dict({"text": texts}), tokenizer, "seq-cls", 32, 32)
    )
    # graded weights only, nothing protected: the shape as these curves measured it
    return spread_rate(mean, sensitivity_weights(scores, protect_factor=math.inf), 0.95), scores


def sensitivity(seed: int) -> dict:
    cfg = RunConfig.from_flat({"preset": "llm-austen", "method": "fedlora", "model.max-length": 32})
    torch.manual_seed(seed)
    model, tokenizer = build_model(cfg, num_labels=0)
    model.eval()
    texts = load_proxy_texts(cfg.proxy.name, 64, seed)
    batches = make_batches(Dataset.from_dict({"text": texts}), tokenizer, "causal-lm", 32, 32)
    num_blocks = LayerMap(model).num_blocks

    def loss(active: list[int]) -> float:
        with torch.no_grad(), only_blocks(model, active):
            return sum(model(**b).loss.item() for b in batches) / len(batches)

    full = loss(list(range(num_blocks)))
    removed = [loss([i for i in range(num_blocks) if i != block]) for block in range(num_blocks)]
    return {"full_loss": full, "loss_without_block": removed}


def curve(rates: tuple[float, ...], seed: int, steps: int, every: int, resample_every: int = 1) -> dict:
    """Full-depth validation accuracy every ``every`` steps of one client trained with ``rates``; the set
    of active blocks is drawn anew every ``resample_every`` steps."""
    cfg = RunConfig.from_flat(
        {"preset": "paper-cls", "method": "fedlora", "model.max-length": 32, "seed": seed}
    )
    torch.manual_seed(seed)
    splits = server_splits(cfg.data, "seq-cls", 0)  # the testbed's splits: never its test split here
    model, tokenizer = build_model(cfg, num_labels=splits.num_labels)
    num_blocks = LayerMap(model).num_blocks
    test = splits.validation
    train = splits.pool.shuffle(seed=seed).select(range(min(len(splits.pool), 16 * steps)))
    batches = make_batches(train, tokenizer, "seq-cls", 32, 16)
    test_batches = make_batches(test, tokenizer, "seq-cls", 32, 50)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    accuracies, seconds, blocks = [], 0.0, 0
    active = list(range(num_blocks))
    for step in range(steps):
        if rates and step % resample_every == 0:
            active = sample_active_blocks(rates, generator)
        blocks += len(active)
        batch = batches[step % len(batches)]
        seconds += timed_step(model, params, optimizer, batch, only_blocks(model, active))
        if (step + 1) % every == 0:
            accuracies.append(round(evaluate(model, test_batches, "seq-cls")["accuracy"], 3))
    return {"accuracy": accuracies, "train_seconds": seconds, "blocks_per_step": blocks / steps}


def run_curves(
    settings: dict[str, tuple[tuple[float, ...], int]], seeds: list[int], steps: int, every: int
) -> dict[str, dict[int, dict]]:
    """label -> seed -> ``curve`` for settings given as (rates, steps between draws of the active set)."""
    curves: dict[str, dict[int, dict]] = {}
    for label, (rates, resample_every) in settings.items():
        curves[label] = {seed: curve(rates, seed, steps, every, resample_every) for seed in seeds}
        print(label, curves[label], flush=True)
    return curves


def curve_table(curves: dict[str, dict[int, dict]], marks: list[int]) -> str:
    """Mean accuracy over the seeds at each mark, the last accuracy per seed, blocks run and train seconds."""
    rows = []
    for label, by_seed in curves.items():
        mean = [statistics.mean(r["accuracy"][i] for r in by_seed.values()) for i in range(len(marks))]
        blocks = statistics.mean(r["blocks_per_step"] for r in by_seed.values())
        secs = statistics.mean(r["train_seconds"] for r in by_seed.values())
        per_seed = " / ".join(f"{r['accuracy'][-1]:.3f}" for r in by_seed.values())
        rows.append([label, *(f"{a:.3f}" for a in mean), per_seed, f"{blocks:.1f}", f"{secs:.0f}"])
    return table(["setting", *(f"acc @{m}" for m in marks), "final per seed", "blocks/step", "train s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--skip-curves", action="store_true")
    args = parser.parse_args(argv)
    info = machine()
    sens = sensitivity(0)
    print(sens, flush=True)
    num_blocks = len(sens["loss_without_block"])
    by_sensitivity, scores = sensitivity_rates(RATE)
    sens["hidden_state_sensitivity"] = scores
    sens["sensitivity_rates"] = list(by_sensitivity)
    print(sens, flush=True)
    settings = {
        "full depth": (),
        f"uniform {RATE}": DropConfig(RATE, "uniform").rates(num_blocks),
        f"incremental {RATE}": DropConfig(RATE, "incremental").rates(num_blocks),
        f"sensitivity {RATE}": by_sensitivity,
    }
    seeds = [int(s) for s in args.seeds.split(",")]
    curves = (
        {}
        if args.skip_curves
        else run_curves({k: (tuple(v), 1) for k, v in settings.items()}, seeds, args.steps, args.every)
    )
    markdown = header(
        "Layer dropout shapes on a pretrained 30-block decoder (SmolLM2-135M)", info, command_line(), False
    )
    deltas = [loss - sens["full_loss"] for loss in sens["loss_without_block"]]
    markdown += (
        f"### Loss increase when one block is removed (pretrained LM, 64 proxy headlines x 32 tokens; "
        f"full-depth loss {sens['full_loss']:.3f})\n\n"
        + table(
            ["block", *range(num_blocks)],
            [
                ["+LM loss", *(f"{d:.2f}" for d in deltas)],
                ["hidden-state error (classifier)", *(f"{x:.2f}" for x in scores)],
                [f"sensitivity-shape rate (mean {RATE})", *(f"{r:.2f}" for r in by_sensitivity)],
            ],
        )
        + "\n"
    )
    if curves:
        marks = list(range(args.every, args.steps + 1, args.every))
        markdown += (
            f"\n### Learning curves (BBC News, 5 topics, one client, LoRA, constant lr 1e-3, batch 16 x 32 "
            f"tokens; full-depth accuracy on the server validation split, mean over seeds {seeds})\n\n"
            + curve_table(curves, marks)
            + "\n"
        )
    print(markdown)
    write_results(
        "stld_shapes",
        RESULTS,
        markdown,
        {"machine": info, "command": command_line(), "sensitivity": sens, "curves": curves},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
