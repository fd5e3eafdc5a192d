"""Does a LEFF student keep the task? Accuracy of a fine-tuned model with its blocks outside a window
replaced by students, for each student rule.

LEFF clients train their window inside [student, window, student]; if the students lose the task, the
window and head learn on features the global model never produces. This takes a fine-tuned MiniLM (the
LoRA on 1,280 examples of the clients' pool, 80 steps of batch 16 at constant lr 1e-3, merged), and for
several windows evaluates 500 other labelled pool examples (never the server's test split) with the blocks
outside the window replaced by students built by each rule:

- ``middle, undistilled / mse 20 / mse 200``: the earlier rule (a one-block student copies the segment's
  middle block), plain MSE, 0 / 20 / 200 steps;
- ``last, undistilled``: a one-block student copies the segment's last block (``leff.student-init=uniform``);
- ``last, mse 20`` / ``last, mse 200``: 20 steps (the default budget) and ten times more.

Columns ``err`` give the distilled students' normalised error (share of the teacher's output variance not
reproduced), averaged over the window's segments.

With ``--preset`` the model and task are that testbed's and the students are LEFF's as a run builds them
(the run's compression, distillation lr and alpha, sources picked by proxy block sensitivity) at
``leff.distill-steps`` times each ``--budgets`` factor (0 = undistilled copies); ``s`` is the server's
distillation time for the window's students on this machine.

    python benchmarks/leff_students.py      # -> benchmarks/results/leff_students.{md,json}
    python benchmarks/leff_students.py --preset paper-enc --examples 200 --train-steps 40 --batch-size 8 \
        --windows 0:4,4:4,8:4 --name paper-enc--leff-students--seed0
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from unittest import mock

import torch
from benchlib import RESULTS, command_line, header, machine, table, write_results
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.core.layers import find_blocks, swap_blocks
from fedcore.data.batching import make_batches
from fedcore.data.proxy import load_proxy_texts
from fedcore.data.splits import server_splits
from fedcore.mechanisms.block_sensitivity import block_sensitivity
from fedcore.methods.leff import distill
from fedcore.model import build_model
from fedcore.training.evaluate import evaluate

WINDOWS = ((0, 1), (1, 3), (2, 2), (3, 1), (5, 1))
#: (label, one-block rule, steps); steps None = the undistilled copies
RULES = (
    ("middle, undistilled", "middle", None),
    ("middle, mse 20", "middle", 20),
    ("middle, mse 200", "middle", 200),
    ("last, undistilled", "last", None),
    ("last, mse 20", "last", 20),
    ("last, mse 200", "last", 200),
)


_UNIFORM_SOURCES = distill.student_sources


def _middle_sources(n: int, depth: int, sensitivity: Sequence[float] | None = None) -> list[int]:
    return [(n - 1) // 2] if depth == 1 else _UNIFORM_SOURCES(n, depth)


def students_for(
    model: nn.Module,
    window: range,
    rule: str,
    steps: int | None,
    proxy: Sequence,
    blocks: nn.ModuleList,
) -> tuple[nn.ModuleList, float | None]:
    """[students before, window blocks, students after] and the students' mean normalised error."""
    parts, errors = [], []
    rule_sources = _middle_sources if rule == "middle" else _UNIFORM_SOURCES
    with mock.patch.object(distill, "student_sources", rule_sources):
        for segment in distill.segments_outside(window.start, len(window), len(blocks)):
            depth = distill.student_depth(len(segment), 0.5)
            if steps is None:
                student, _ = distill.init_student([blocks[i] for i in segment], depth)
            else:
                part = distill.distill_segment(
                    model, segment, depth, proxy, steps=steps, lr=1e-4, alpha=0.0, seed=0
                )
                student = part.blocks
                errors.append(part.error_after)
            parts.append((segment, list(student)))
    before = [b for seg, s in parts if seg.stop <= window.start for b in s]
    after = [b for seg, s in parts if seg.start >= window.stop for b in s]
    layout = nn.ModuleList([*before, *(blocks[i] for i in window), *after])
    return layout, (sum(errors) / len(errors) if errors else None)


def run_students(
    cfg: RunConfig,
    model: nn.Module,
    window: range,
    steps: int,
    proxy: Sequence,
    blocks: nn.ModuleList,
    sensitivity: Sequence[float],
) -> tuple[nn.ModuleList, float | None, float]:
    """[students, window blocks, students] as a LEFF run builds them, with ``steps`` distillation steps
    (0: the undistilled copies); the students' mean normalised error and the distillation seconds."""
    leff = cfg.leff
    began = time.perf_counter()
    before, after, errors = [], [], []
    for segment in distill.segments_outside(window.start, len(window), len(blocks)):
        depth = distill.student_depth(len(segment), leff.compression)
        scores = [sensitivity[i] for i in segment]
        if steps == 0:
            student, _ = distill.init_student([blocks[i] for i in segment], depth, scores)
        else:
            part = distill.distill_segment(
                model,
                segment,
                depth,
                proxy,
                steps=steps,
                lr=leff.distill_lr,
                alpha=leff.distill_alpha,
                seed=cfg.seed,
                sensitivity=scores,
            )
            student = part.blocks
            errors.append(part.error_after)
        (before if segment.stop <= window.start else after).extend(student)
    layout = nn.ModuleList([*before, *(blocks[i] for i in window), *after])
    error = sum(errors) / len(errors) if errors else None
    return layout, error, time.perf_counter() - began


def fine_tuned(
    cfg: RunConfig, train: Dataset, num_labels: int = 2, batch_size: int = 16
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The preset's model + LoRA trained at full depth on ``train`` (constant lr 1e-3), adapters merged."""
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg, num_labels=num_labels)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    model.train()
    for batch in make_batches(train, tokenizer, "seq-cls", cfg.model.max_length, batch_size, 0):
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.merge_and_unload().eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--train-steps", type=int, default=80)
    parser.add_argument("--preset", default="", help="a testbed preset: its model, task and LEFF students")
    parser.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch size")
    parser.add_argument("--windows", default="", help="start:width,... (default: the MiniLM windows)")
    parser.add_argument("--budgets", default="0,1,5,25", help="x leff.distill-steps, with --preset")
    parser.add_argument("--name", default="leff_students", help="result file name")
    args = parser.parse_args(argv)
    cfg = RunConfig.from_flat({"preset": args.preset} if args.preset else {})
    splits = server_splits(cfg.data, "seq-cls", cfg.seed)
    pool = splits.pool.shuffle(seed=1)
    model, tokenizer = fine_tuned(
        cfg,
        pool.select(range(args.examples, args.examples + args.batch_size * args.train_steps)),
        splits.num_labels,
        args.batch_size,
    )
    eval_batches = make_batches(
        pool.select(range(args.examples)), tokenizer, "seq-cls", cfg.model.max_length, 64
    )
    texts = load_proxy_texts(cfg.proxy.name, cfg.proxy.examples, cfg.seed)
    proxy = make_batches(Dataset.from_dict({"text": texts}), tokenizer, "seq-cls", cfg.model.max_length, 32)
    blocks = find_blocks(model)[1]
    windows = (
        [tuple(int(x) for x in w.split(":")) for w in args.windows.split(",")] if args.windows else WINDOWS
    )
    info = machine()
    full = evaluate(model, eval_batches, "seq-cls")["accuracy"]
    print(f"full model accuracy {full:.3f}", flush=True)
    rows, data = [], {"full_model_accuracy": full, "windows": {}}
    if args.preset:
        sensitivity = block_sensitivity(model, proxy)
        budgets = [int(b) for b in args.budgets.split(",")]
        labels = [f"{b * cfg.leff.distill_steps} steps" if b else "undistilled" for b in budgets]
        data["sensitivity"] = sensitivity
    else:
        labels = [r[0] for r in RULES]
    for start, width in windows:
        window = range(start, start + width)
        row: list = [f"{start}-{start + width - 1}"]
        data["windows"][row[0]] = {}
        for index, label in enumerate(labels):
            if args.preset:
                steps = budgets[index] * cfg.leff.distill_steps
                layout, error, seconds = run_students(cfg, model, window, steps, proxy, blocks, sensitivity)
            else:
                _, rule, steps = RULES[index]
                layout, error = students_for(model, window, rule, steps, proxy, blocks)
                seconds = None
            with swap_blocks(model, layout):
                accuracy = evaluate(model, eval_batches, "seq-cls")["accuracy"]
            data["windows"][row[0]][label] = {"accuracy": accuracy, "error": error, "seconds": seconds}
            cell = f"{accuracy:.3f}" + (f" (err {error:.2f}" if error is not None else "")
            if seconds is not None and error is not None:
                cell += f", {seconds:.0f} s"
            row.append(cell + (")" if error is not None else ""))
            print(row[0], label, accuracy, error, seconds, flush=True)
        rows.append(row)
    markdown = header(
        "LEFF students: task accuracy with the blocks outside a window replaced", info, command_line(), False
    )
    model_name = cfg.model.name.removeprefix("embedded:")
    students = (
        f"LEFF's students as a run builds them (compression {cfg.leff.compression}, MSE "
        f"loss, lr {cfg.leff.distill_lr}, alpha {cfg.leff.distill_alpha}, sources by proxy block "
        f"sensitivity), distilled on {cfg.proxy.examples} proxy headlines; the default budget is "
        f"{cfg.leff.distill_steps} steps. Cell: accuracy (normalised student error, server distillation "
        "seconds for the window's students)."
        if args.preset
        else "Compression 0.5, distillation lr 1e-4 on 128 proxy headlines, alpha 0. Cell: accuracy "
        "(normalised student error)."
    )
    markdown += (
        f"Fine-tuned model: {model_name} + LoRA ({cfg.data.name.removeprefix('embedded:')}, "
        f"{cfg.model.max_length} tokens), {args.train_steps} full-depth steps of batch {args.batch_size}, "
        f"merged; full-model accuracy {full:.3f} on {args.examples} labelled pool examples (not the test "
        f"split). {students}\n\n" + table(["window", *labels], rows) + "\n"
    )
    print(markdown)
    write_results(args.name, RESULTS, markdown, {"machine": info, "command": command_line(), **data})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
