"""Which blocks can a pretrained model skip? Block-removal sensitivity and STLD learning curves per
drop shape, on a testbed preset's model (the 30-block SmolLM2-135M of ``paper-cls`` by default).

Part 1 (sensitivity): the pretrained causal LM's loss on proxy headlines with ONE block removed, for each
block (``--lm-preset``; an encoder without its pretraining head has none: ``--lm-preset ''``), and the
classifier's label-free hidden-state error with that block skipped: a block whose removal breaks the model
should not be dropped while fine-tuning either. With ``--task-removal`` also the task's validation loss and
accuracy with each block removed from the full-depth model the first seed's curve trained.
Part 2 (learning): one client, LoRA, constant lr 1e-3, batch 16 x 32 tokens (``--batch-size``,
``--max-length``), the 5-topic BBC News classifier (the preset's task, IID), full-depth accuracy on the
testbed's server validation split every 20 steps, for full depth and mean drop rate 0.3 spread three ways:
uniform, incremental (p_l ~ l+1, the stochastic-depth rule) and ``sensitivity`` (rates spread by block
removal sensitivity, measured without labels on proxy text: ``fedcore.sensitivity``).

    python benchmarks/stld_shapes.py              # -> benchmarks/results/stld_shapes.{md,json}
    python benchmarks/stld_shapes.py --preset paper-enc --lm-preset '' --max-length 64 --batch-size 8 \
        --steps 40 --every 10 --seeds 0 --task-removal --name paper-enc--stld-shapes--seed0
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass

import torch
from benchlib import RESULTS, command_line, header, machine, table, timed_step, write_results
from datasets import Dataset
from torch import nn

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


def sensitivity_rates(mean: float, preset: str = "paper-cls") -> tuple[tuple[float, ...], list[float]]:
    """The classifier's label-free block sensitivity on 64 proxy headlines, and the rates it gives."""
    cfg = RunConfig.from_flat({"preset": preset, "method": "fedlora", "model.max-length": 32})
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg, num_labels=5)
    texts = load_proxy_texts(cfg.proxy.name, 64, 0)
    scores = block_sensitivity(
        model, make_batches(Dataset.from_dict({"text": texts}), tokenizer, "seq-cls", 32, 32)
    )
    # graded weights only, nothing protected: the shape as these curves measured it
    return spread_rate(mean, sensitivity_weights(scores, protect_factor=math.inf), 0.95), scores


def sensitivity(seed: int, lm_preset: str = "llm-austen") -> dict:
    cfg = RunConfig.from_flat({"preset": lm_preset, "method": "fedlora", "model.max-length": 32})
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


@dataclass(frozen=True)
class Bench:
    """The testbed a curve runs on: its preset and the batch shape (rows x tokens)."""

    preset: str = "paper-cls"
    max_length: int = 32
    batch_size: int = 16


def task_removal(model: nn.Module, batches: list) -> dict:
    """Validation loss and accuracy of a fine-tuned classifier at full depth and with each block removed."""
    num_blocks = LayerMap(model).num_blocks
    full = evaluate(model, batches, "seq-cls")
    removed = []
    for block in range(num_blocks):
        with only_blocks(model, [i for i in range(num_blocks) if i != block]):
            removed.append(evaluate(model, batches, "seq-cls"))
    return {
        "full_loss": full["loss"],
        "full_accuracy": full["accuracy"],
        "loss_without_block": [r["loss"] for r in removed],
        "accuracy_without_block": [r["accuracy"] for r in removed],
    }


def curve(
    rates: tuple[float, ...],
    seed: int,
    steps: int,
    every: int,
    resample_every: int = 1,
    bench: Bench = Bench(),
    removal: bool = False,
) -> dict:
    """Full-depth validation accuracy every ``every`` steps of one client trained with ``rates``; the set
    of active blocks is drawn anew every ``resample_every`` steps. ``removal`` adds ``task_removal``."""
    cfg = RunConfig.from_flat(
        {"preset": bench.preset, "method": "fedlora", "model.max-length": bench.max_length, "seed": seed}
    )
    torch.manual_seed(seed)
    splits = server_splits(cfg.data, "seq-cls", 0)  # the testbed's splits: never its test split here
    model, tokenizer = build_model(cfg, num_labels=splits.num_labels)
    num_blocks = LayerMap(model).num_blocks
    test = splits.validation
    train = splits.pool.shuffle(seed=seed).select(range(min(len(splits.pool), 16 * steps)))
    batches = make_batches(train, tokenizer, "seq-cls", bench.max_length, bench.batch_size)
    test_batches = make_batches(test, tokenizer, "seq-cls", bench.max_length, 50)
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
    result = {"accuracy": accuracies, "train_seconds": seconds, "blocks_per_step": blocks / steps}
    if removal:
        result["task_removal"] = task_removal(model, test_batches)
    return result


def run_curves(
    settings: dict[str, tuple[tuple[float, ...], int]],
    seeds: list[int],
    steps: int,
    every: int,
    bench: Bench = Bench(),
    removal: bool = False,
) -> dict[str, dict[int, dict]]:
    """label -> seed -> ``curve`` for settings given as (rates, steps between draws of the active set);
    ``removal``: ``task_removal`` after the first setting's first seed (full depth, by convention)."""
    curves: dict[str, dict[int, dict]] = {}
    for index, (label, (rates, resample_every)) in enumerate(settings.items()):
        curves[label] = {
            seed: curve(
                rates, seed, steps, every, resample_every, bench, removal and index == 0 and seed == seeds[0]
            )
            for seed in seeds
        }
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
    parser.add_argument("--preset", default="paper-cls", help="the classifier testbed")
    parser.add_argument("--lm-preset", default="llm-austen", help="the pretrained LM ('' = none)")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--task-removal", action="store_true")
    parser.add_argument("--name", default="stld_shapes", help="result file name")
    args = parser.parse_args(argv)
    info = machine()
    bench = Bench(args.preset, args.max_length, args.batch_size)
    sens = sensitivity(0, args.lm_preset) if args.lm_preset else {}
    print(sens, flush=True)
    by_sensitivity, scores = sensitivity_rates(RATE, args.preset)
    num_blocks = len(scores)
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
        else run_curves(
            {k: (tuple(v), 1) for k, v in settings.items()},
            seeds,
            args.steps,
            args.every,
            bench,
            args.task_removal,
        )
    )
    model_name = RunConfig.from_flat({"preset": args.preset}).model.name.removeprefix("embedded:")
    markdown = header(
        f"Layer dropout shapes on a pretrained {num_blocks}-block model ({model_name}, preset {args.preset})",
        info,
        command_line(),
        False,
    )
    rows = []
    if "full_loss" in sens:
        rows.append(["+LM loss", *(f"{loss - sens['full_loss']:.2f}" for loss in sens["loss_without_block"])])
    rows += [
        ["hidden-state error (classifier)", *(f"{x:.2f}" for x in scores)],
        [f"sensitivity-shape rate (mean {RATE})", *(f"{r:.2f}" for r in by_sensitivity)],
    ]
    removal = curves["full depth"][seeds[0]].get("task_removal") if curves else None
    if removal:
        rows += [
            [
                "+task loss (fine-tuned, validation)",
                *(f"{loss - removal['full_loss']:.2f}" for loss in removal["loss_without_block"]),
            ],
            ["task accuracy without the block", *(f"{a:.3f}" for a in removal["accuracy_without_block"])],
        ]
    lm = f"pretrained LM, full-depth loss {sens['full_loss']:.3f}; " if "full_loss" in sens else ""
    task = (
        f"; task: the full-depth curve's model (seed {seeds[0]}), validation loss "
        f"{removal['full_loss']:.3f}, accuracy {removal['full_accuracy']:.3f}"
        if removal
        else ""
    )
    markdown += (
        f"### What removing one block costs ({lm}hidden-state error on 64 proxy headlines x 32 tokens{task})"
        "\n\n" + table(["block", *range(num_blocks)], rows) + "\n"
    )
    if curves:
        marks = list(range(args.every, args.steps + 1, args.every))
        markdown += (
            f"\n### Learning curves (BBC News, 5 topics, one client, LoRA, constant lr 1e-3, batch "
            f"{args.batch_size} x {args.max_length} tokens; full-depth accuracy on the server validation "
            f"split, mean over seeds {seeds})\n\n" + curve_table(curves, marks) + "\n"
        )
    print(markdown)
    write_results(
        args.name,
        RESULTS,
        markdown,
        {"machine": info, "command": command_line(), "sensitivity": sens, "curves": curves},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
