"""Why does LEFF not learn on the paper-cls testbed? One client's training, LEFF's parts added one at a time.

On the testbed (SmolLM2-135M as a 5-topic BBC News classifier, 30 blocks) a LEFF federation stayed at its
starting accuracy (``paper-testbed.md``). This separates the causes on one client: pooled training examples,
50 steps of batch 8 x 32 tokens (the testbed's 10 rounds x 5 local steps), the full-tuning lr 5e-5 (and 2e-4
where the label says so) held constant, AdamW, gradient clipping 1.0; full-depth accuracy on the server
validation split (never its test split). Settings:

- ``full``: every block and the head trained (FedAvg's trainable set);
- ``head``: the head (score layer and final norm) alone;
- ``window W, exact rest``: a 5-block window (the smallest device's width) and the head, every other block
  the frozen teacher;
- ``window W, uniform / sensitive students``: the same, the blocks outside the window replaced by students
  distilled as the planner does (compression 0.5, 20 steps of the paper's MSE at lr 1e-4 on 128 proxy
  headlines), started from uniformly spaced or from the most removal-sensitive teacher blocks
  (``leff.student-init``). This is the model a LEFF client trains in;
- ``window W, protected students``: sensitive students that also keep every protected block of their
  segment (removal sensitivity above twice the median) whole, ``leff.keep-protected``.

Windows: ``top`` = the 5 blocks with the highest importance score (blocks 25-29 here), ``middle`` = 10-14
(students on both sides).

    python benchmarks/leff_causes.py                   # -> benchmarks/results/leff_causes.{md,json}
    python benchmarks/leff_causes.py --only 0,1 --part /tmp/a.json     # a share of the settings
    python benchmarks/leff_causes.py --report /tmp/a.json /tmp/b.json  # the report from the shares
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from benchlib import RESULTS, command_line, header, machine, table, timed_step, write_results
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core.layers import EMBED, HEAD, LayerMap, block_group, find_blocks, swap_blocks
from fedcore.data.batching import make_batches
from fedcore.data.proxy import load_proxy_texts
from fedcore.data.splits import server_splits
from fedcore.mechanisms.layer_dropout import protected_blocks
from fedcore.methods.base import proxy_sensitivity
from fedcore.methods.leff.distill import distill_segment, segments_outside, student_depth
from fedcore.methods.leff.importance import block_importance, window_scores
from fedcore.model import build_model
from fedcore.training.evaluate import evaluate

WIDTH = 5
LR = 5e-5
#: (label, trained set, window ("top", "middle" or None), students (None, "uniform", "sensitive"), lr)
SETTINGS = (
    ("full", "full", None, None, LR),
    ("head", "head", None, None, LR),
    ("window top, exact rest", "window", "top", None, LR),
    ("window top, uniform students", "window", "top", "uniform", LR),
    ("window top, sensitive students", "window", "top", "sensitive", LR),
    ("window middle, uniform students", "window", "middle", "uniform", LR),
    ("window middle, sensitive students", "window", "middle", "sensitive", LR),
    ("window top, exact rest, lr 2e-4", "window", "top", None, 2e-4),
    ("window top, sensitive students, lr 2e-4", "window", "top", "sensitive", 2e-4),
    ("full, lr 2e-4", "full", None, None, 2e-4),
    ("window middle, exact rest, lr 2e-4", "window", "middle", None, 2e-4),
    ("window middle, sensitive students, lr 2e-4", "window", "middle", "sensitive", 2e-4),
    ("window middle, protected students, lr 2e-4", "window", "middle", "protected", 2e-4),
)


def _window(model: nn.Module, proxy: list, where: str) -> range:
    if where == "middle":
        return range(10, 10 + WIDTH)
    scores = window_scores(block_importance(model, proxy, "seq-cls"), WIDTH)
    start = max(range(len(scores)), key=scores.__getitem__)
    return range(start, start + WIDTH)


def _students(
    cfg: RunConfig,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    window: range,
    proxy: list,
    init: str,
    seed: int,
) -> tuple[nn.ModuleList, list[float]]:
    """[students before, window blocks, students after], distilled as the LEFF planner does."""
    blocks = find_blocks(model)[1]
    sensitivity = proxy_sensitivity(cfg, model, tokenizer) if init != "uniform" else None
    protected = set(protected_blocks(sensitivity)) if init == "protected" and sensitivity else set()
    parts: dict[bool, list[nn.Module]] = {}
    errors = []
    for segment in segments_outside(window.start, len(window), len(blocks)):
        done = distill_segment(
            model,
            segment,
            student_depth(len(segment), cfg.leff.compression, kept=len(protected.intersection(segment))),
            proxy,
            steps=cfg.leff.distill_steps,
            lr=cfg.leff.distill_lr,
            alpha=0.0,
            seed=seed,
            sensitivity=[sensitivity[i] for i in segment] if sensitivity else None,
        )
        parts[segment.start < window.start] = list(done.blocks)
        errors.append(done.error_after)
    layout = [*parts.get(True, []), *(blocks[i] for i in window), *parts.get(False, [])]
    return nn.ModuleList(layout), errors


def curve(
    trained: str, where: str | None, students: str | None, lr: float, seed: int, steps: int, every: int
) -> dict:
    cfg = RunConfig.from_flat({"preset": "paper-cls", "method": "leff", "seed": seed})
    splits = server_splits(cfg.data, "seq-cls", 0)
    model, tokenizer = build_model(cfg, num_labels=splits.num_labels)
    layer_map = LayerMap(model)
    train = splits.pool.shuffle(seed=seed).select(range(min(len(splits.pool), 8 * steps)))
    batches = make_batches(train, tokenizer, "seq-cls", 32, 8)
    val = make_batches(splits.validation, tokenizer, "seq-cls", 32, 64)
    texts = load_proxy_texts(cfg.proxy.name, cfg.proxy.examples, cfg.seed)
    proxy = make_batches(Dataset.from_dict({"text": texts}), tokenizer, "seq-cls", 32, 32)
    layout, errors, window = find_blocks(model)[1], [], None
    if trained == "full":
        groups = set(layer_map.all_groups()) - {EMBED}
    elif trained == "head":
        groups = {HEAD}
    else:
        window = _window(model, proxy, where or "top")
        groups = {HEAD, *(block_group(i) for i in window)}
        if students:
            layout, errors = _students(cfg, model, tokenizer, window, proxy, students, seed)
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(layer_map.group_of(name) in groups)
        if param.requires_grad:
            params.append(param)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    accuracies = [round(evaluate(model, val, "seq-cls")["accuracy"], 3)]
    seconds = 0.0
    for step in range(steps):
        seconds += timed_step(
            model, params, optimizer, batches[step % len(batches)], swap_blocks(model, layout)
        )
        if (step + 1) % every == 0:
            accuracies.append(round(evaluate(model, val, "seq-cls")["accuracy"], 3))
    return {
        "accuracy": accuracies,
        "train_seconds": seconds,
        "window": [window.start, len(window)] if window else None,
        "student_error": errors,
    }


def report(curves: dict[str, dict[str, dict]], steps: int, every: int, info: dict) -> None:
    marks = list(range(0, steps + 1, every))
    rows = []
    for label, *_ in SETTINGS:
        if label not in curves:
            continue
        by_seed = curves[label]
        mean = [statistics.mean(r["accuracy"][i] for r in by_seed.values()) for i in range(len(marks))]
        per_seed = " / ".join(f"{r['accuracy'][-1]:.3f}" for r in by_seed.values())
        errors = [e for r in by_seed.values() for e in r["student_error"]]
        seconds = statistics.mean(r["train_seconds"] for r in by_seed.values())
        error = " / ".join(f"{e:.2f}" for e in errors) if errors else "-"
        rows.append([label, *(f"{a:.3f}" for a in mean), per_seed, error, f"{seconds:.0f}"])
    seeds = sorted({s for by_seed in curves.values() for s in by_seed})
    markdown = header(
        "LEFF on the paper-cls testbed: one client, its parts added one at a time",
        info,
        command_line(),
        False,
    )
    markdown += (
        f"One client, {steps} steps of batch 8 x 32 tokens, pooled training examples, constant lr {LR:g} "
        "unless the label says otherwise, "
        f"AdamW; full-depth accuracy on the server validation split, mean over seeds {seeds}. Student error: "
        "normalised error (share of the teacher's output variance not reproduced) of each distilled segment "
        "after 20 steps, per seed and segment.\n\n"
        + table(
            ["setting", *(f"acc @{m}" for m in marks), "final per seed", "student error", "train s"], rows
        )
        + "\n"
    )
    print(markdown)
    write_results(
        "leff_causes", RESULTS, markdown, {"machine": info, "command": command_line(), "curves": curves}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", default="", help="comma-separated indices into SETTINGS")
    parser.add_argument("--part", type=Path, help="write these settings' curves here, no report")
    parser.add_argument("--report", type=Path, nargs="+", help="report from --part files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = machine()
    if args.report:
        curves = {k: v for path in args.report for k, v in json.loads(path.read_text()).items()}
        report(curves, args.steps, args.every, info)
        return 0
    chosen = [SETTINGS[int(i)] for i in args.only.split(",")] if args.only else list(SETTINGS)
    curves: dict[str, dict[str, dict]] = {}
    for label, trained, where, students, lr in chosen:
        curves[label] = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            curves[label][str(seed)] = curve(trained, where, students, lr, seed, args.steps, args.every)
            print(label, seed, curves[label][str(seed)], flush=True)
            if args.part:
                args.part.write_text(json.dumps(curves))
    if not args.part:
        report(curves, args.steps, args.every, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
