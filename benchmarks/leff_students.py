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

    python benchmarks/leff_students.py      # -> benchmarks/results/leff_students.{md,json}
"""

from __future__ import annotations

import argparse
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


def fine_tuned(cfg: RunConfig, train: Dataset) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """MiniLM + LoRA trained at full depth on ``train`` (batch 16, constant lr 1e-3), adapters merged."""
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg, num_labels=2)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    model.train()
    for batch in make_batches(train, tokenizer, "seq-cls", cfg.model.max_length, 16, 0):
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
    args = parser.parse_args(argv)
    cfg = RunConfig.from_flat({})
    pool = server_splits(cfg.data, "seq-cls", cfg.seed).pool.shuffle(seed=1)
    model, tokenizer = fine_tuned(
        cfg, pool.select(range(args.examples, args.examples + 16 * args.train_steps))
    )
    eval_batches = make_batches(
        pool.select(range(args.examples)), tokenizer, "seq-cls", cfg.model.max_length, 64
    )
    texts = load_proxy_texts(cfg.proxy.name, cfg.proxy.examples, cfg.seed)
    proxy = make_batches(Dataset.from_dict({"text": texts}), tokenizer, "seq-cls", cfg.model.max_length, 32)
    blocks = find_blocks(model)[1]
    info = machine()
    full = evaluate(model, eval_batches, "seq-cls")["accuracy"]
    print(f"full model accuracy {full:.3f}", flush=True)
    rows, data = [], {"full_model_accuracy": full, "windows": {}}
    for start, width in WINDOWS:
        window = range(start, start + width)
        row: list = [f"{start}-{start + width - 1}"]
        data["windows"][row[0]] = {}
        for label, rule, steps in RULES:
            layout, error = students_for(model, window, rule, steps, proxy, blocks)
            with swap_blocks(model, layout):
                accuracy = evaluate(model, eval_batches, "seq-cls")["accuracy"]
            data["windows"][row[0]][label] = {"accuracy": accuracy, "error": error}
            row.append(f"{accuracy:.3f}" + (f" (err {error:.2f})" if error is not None else ""))
            print(row[0], label, accuracy, error, flush=True)
        rows.append(row)
    markdown = header(
        "LEFF students: task accuracy with the blocks outside a window replaced", info, command_line(), False
    )
    markdown += (
        f"Fine-tuned model: MiniLM + LoRA, {args.train_steps} full-depth steps, merged; full-model accuracy "
        f"{full:.3f} on {args.examples} labelled pool examples (not the test split). Compression 0.5, "
        "distillation lr 1e-4 on 128 proxy headlines, alpha 0. Cell: accuracy (normalised student error).\n\n"
        + table(["window", *(r[0] for r in RULES)], rows)
        + "\n"
    )
    print(markdown)
    write_results("leff_students", RESULTS, markdown, {"machine": info, "command": command_line(), **data})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
