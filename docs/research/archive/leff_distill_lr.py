"""How well do LEFF's students fit their teacher segment, by distillation learning rate and steps?

LEFF's students are distilled on the server from the current global model (``distill_segment``, the paper's
MSE on proxy text). On the paper-cls testbed a window with students above it learned far less than the
same window with the exact blocks (``leff_causes.md``), and one-client curves put the cause in the
students' error. This measures that error directly, on the pretrained SmolLM2-135M (the model every
testbed federation starts from), for the students of a middle window (blocks 10-14: students for 0-9 and
15-29), at compression 0.5 with the sensitive initialisation (``leff.student-init``, the default):

distilled either on the 128 proxy headlines the planner uses (``proxy.name``, the default) or on the
texts of the server's validation split (held by the server, unlabelled use only; never the test split).
Each student's error is measured

- on the texts it was distilled on (``fit``),
- on 128 other proxy headlines (``held-out proxy``),
- on 128 texts of the clients' training pool (``client text``): the inputs the students really see when a
  client trains its window, never used for distillation.

The error is the normalised one (share of the teacher segment's output variance the student does not
reproduce, 0 = exact, 1 = no better than the mean). No training of the task: the students only.

    python benchmarks/leff_distill_lr.py        # -> benchmarks/results/leff_distill_lr.{md,json}
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
from benchlib import RESULTS, command_line, header, machine, table, write_results
from datasets import Dataset
from torch import nn

from fedcore.config import RunConfig
from fedcore.core.layers import find_blocks
from fedcore.data.batching import Batch, make_batches
from fedcore.data.proxy import load_proxy_texts
from fedcore.data.splits import server_splits
from fedcore.methods.base import proxy_sensitivity
from fedcore.methods.leff.distill import distill_segment, segments_outside, student_depth
from fedcore.model import build_model

WINDOWS = {"middle (10-14)": range(10, 15)}
#: (distillation text, lr, steps): the student as initialised (0 steps), the default (proxy, 1e-4, 20), a
#: higher rate at the same cost, the default rate at 5x the steps, and the same on the validation texts
SETTINGS = (
    ("proxy", 1e-4, 0),
    ("proxy", 1e-4, 20),
    ("proxy", 1e-3, 20),
    ("proxy", 1e-4, 100),
    ("validation", 1e-4, 20),
    ("validation", 1e-3, 20),
)


def student_error(
    model: nn.Module, segment: range, student: nn.ModuleList, batches: Sequence[Batch]
) -> float:
    """The student's normalised error on ``batches`` (a zero-step distillation reports it unchanged)."""
    measured = distill_segment(
        model, segment, len(student), batches, steps=0, lr=1.0, alpha=0.0, seed=0, initial=student
    )
    return measured.error_before


def measure(seed: int) -> list[dict]:
    cfg = RunConfig.from_flat({"preset": "paper-cls", "method": "leff", "seed": seed})
    splits = server_splits(cfg.data, "seq-cls", 0)
    model, tokenizer = build_model(cfg, num_labels=splits.num_labels)
    model.eval()

    def batches(texts: list[str]) -> list[Batch]:
        return make_batches(Dataset.from_dict({"text": texts}), tokenizer, "seq-cls", 32, 32)

    drawn = load_proxy_texts(cfg.proxy.name, 2 * cfg.proxy.examples, seed)
    proxy, held_out = batches(drawn[: cfg.proxy.examples]), batches(drawn[cfg.proxy.examples :])
    sources = {"proxy": proxy, "validation": batches(list(splits.validation["text"]))}
    client_texts = splits.pool.shuffle(seed=seed)["text"][: cfg.proxy.examples]
    client = batches(list(client_texts))
    sensitivity = proxy_sensitivity(cfg, model, tokenizer)
    num_blocks = len(find_blocks(model)[1])
    rows = []
    for window_name, window in WINDOWS.items():
        for segment in segments_outside(window.start, len(window), num_blocks):
            depth = student_depth(len(segment), cfg.leff.compression)
            for source, lr, steps in SETTINGS:
                started = time.perf_counter()
                done = distill_segment(
                    model,
                    segment,
                    depth,
                    sources[source],
                    steps=steps,
                    lr=lr,
                    alpha=0.0,
                    seed=seed,
                    sensitivity=[sensitivity[i] for i in segment],
                )
                rows.append(
                    {
                        "window": window_name,
                        "segment": f"{segment.start}-{segment.stop - 1} -> {depth}",
                        "source": source,
                        "lr": lr,
                        "steps": steps,
                        "seed": seed,
                        "initial": done.error_before,
                        "fit": done.error_after,
                        "held_out": student_error(model, segment, done.blocks, held_out),
                        "client": student_error(model, segment, done.blocks, client),
                        "seconds": time.perf_counter() - started,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def report(rows: list[dict], seeds: list[int], info: dict) -> None:
    lines = []
    for key in dict.fromkeys((r["segment"], r["source"], r["lr"], r["steps"]) for r in rows):
        mine = [r for r in rows if (r["segment"], r["source"], r["lr"], r["steps"]) == key]

        def mean(column: str, runs: list[dict] = mine) -> str:
            return f"{statistics.mean(r[column] for r in runs):.3f}"

        segment, source, lr, steps = key
        lines.append(
            [
                segment,
                source,
                f"{lr:g}",
                steps,
                mean("fit"),
                mean("held_out"),
                mean("client"),
                mean("seconds"),
            ]
        )
    title = "LEFF students: error by distillation text, learning rate and steps (SmolLM2-135M)"
    body = header(title, info, command_line(), False)
    body += (
        f"\nWindow 10-14 (students for blocks 0-9 and 15-29), compression 0.5, sensitive initialisation. "
        "Normalised error of each student (0 = exact, 1 = no better than the mean), "
        f"mean over seeds {seeds}; "
        "0 steps: the student as initialised from its segment's blocks; `s`: distillation seconds "
        f"({torch.get_num_threads()} thread(s)). The planner's "
        "defaults: proxy text, lr 1e-4, 20 steps (5 more per round for a warm-started student).\n\n"
    )
    body += table(
        ["segment -> depth", "distilled on", "lr", "steps", "fit", "held-out proxy", "client text", "s"],
        lines,
    )
    write_results(
        "leff_distill_lr", RESULTS, body, {"machine": info, "command": command_line(), "rows": rows}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args(argv)
    info = machine()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [row for seed in seeds for row in measure(seed)]
    report(rows, seeds, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
