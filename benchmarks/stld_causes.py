"""Why does LoRA under layer dropout learn more slowly per step? Ablations that isolate one cause each.

One client, the real MiniLM with LoRA (the default tuning), constant learning rate (no decay, so a
schedule cannot exaggerate a stall), batch 16 x 32 tokens, full-depth accuracy on held-out examples
every ``--every`` steps. Each setting changes one thing against ``p=0.15``:

- ``full depth``: no dropout (the reference).
- ``full depth, lr x0.85``: tests the "effective learning rate" cause: a block dropped with p=0.15
  receives 15% fewer updates; if this matches p=0.15, the slowdown is just fewer updates.
- ``p=0.15, lr / (1 - p_l)``: compensates each block's missed updates by a larger step.
- ``p=0.15 after head warm-up``: full depth for the first ``--warm`` steps, then p=0.15. Tests the
  "fresh head reads a feature distribution that changes every step" cause: a head that has left the
  plateau at full depth first should then learn at full-depth speed if this is the cause.
- ``p=0.15, head on full-depth features``: every step also runs the full-depth forward without
  gradient and trains the head (only) on those features, while the block adapters learn from the
  dropped-depth pass: separates the head's problem from the blocks' problem (costs an extra forward;
  an ablation, not a method).

    python benchmarks/stld_causes.py              # -> benchmarks/results/stld_causes.{md,json}
    python benchmarks/stld_causes.py --quick      # smoke test -> benchmarks/results/quick/
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from benchlib import MINILM, QUICK_RESULTS, RESULTS, command_line, header, machine, table, write_results
from torch import nn

from fedcore.config import RunConfig
from fedcore.core.layers import HEAD, LayerMap
from fedcore.data.batching import make_batches
from fedcore.data.tables import load_dataset_table
from fedcore.mechanisms.layer_dropout import only_blocks, sample_active_blocks
from fedcore.model import build_model
from fedcore.training.evaluate import evaluate

RATE = 0.15
Step = Callable[[int], list[int]]


def _settings(warm: int) -> dict[str, dict]:
    return {
        "full depth": {"rate": 0.0},
        "full depth, lr x0.85": {"rate": 0.0, "block_lr_scale": 1 - RATE},
        f"p={RATE}": {"rate": RATE},
        f"p={RATE}, lr / (1 - p)": {"rate": RATE, "block_lr_scale": 1 / (1 - RATE)},
        f"p={RATE} after {warm} full-depth steps": {"rate": RATE, "warm": warm},
        f"p={RATE}, head on full-depth features": {"rate": RATE, "head_full_depth": True},
    }


def curve(
    setting: dict, seed: int, steps: int, every: int, lr: float, train_rows: int, test_rows: int
) -> dict:
    cfg = RunConfig.from_flat({"method": "fedlora", "model.name": MINILM, "seed": seed})
    torch.manual_seed(seed)
    model, tokenizer = build_model(cfg, num_labels=2)
    layer_map = LayerMap(model)
    num_blocks = layer_map.num_blocks
    table_ = load_dataset_table(cfg.data, "seq-cls", 0).shuffle(seed=0)
    test = table_.select(range(test_rows))
    train = table_.select(range(test_rows, test_rows + train_rows)).shuffle(seed=seed)
    batches = make_batches(train, tokenizer, "seq-cls", 32, 16)
    test_batches = make_batches(test, tokenizer, "seq-cls", 32, 64)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    head = [p for n, p in params.items() if layer_map.group_of(n) == HEAD]
    blocks = [p for n, p in params.items() if layer_map.group_of(n) != HEAD]
    scale = setting.get("block_lr_scale", 1.0)
    optimizer = torch.optim.AdamW(
        [{"params": head, "lr": lr}, {"params": blocks, "lr": lr * scale}], weight_decay=0.01
    )
    generator = torch.Generator().manual_seed(seed)
    rate = setting["rate"]
    accuracies, seconds, blocks_run = [], 0.0, 0
    for step in range(steps):
        model.train()
        began = time.perf_counter()
        dropping = rate > 0 and step >= setting.get("warm", 0)
        active = sample_active_blocks([rate] * num_blocks, generator) if dropping else list(range(num_blocks))
        blocks_run += len(active)
        batch = batches[step % len(batches)]
        with only_blocks(model, active):
            loss = model(**batch).loss
        if dropping and setting.get("head_full_depth"):
            _head_only_on_full_depth(model, batch, head, loss)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - began
        if (step + 1) % every == 0:
            accuracies.append(round(evaluate(model, test_batches, "seq-cls")["accuracy"], 3))
    return {"accuracy": accuracies, "train_seconds": seconds, "blocks_per_step": blocks_run / steps}


def _head_only_on_full_depth(model: nn.Module, batch: dict, head: list[nn.Parameter], dropped_loss) -> None:
    """Blocks learn from the dropped-depth loss; the head learns from full-depth features instead."""
    dropped_loss.backward()
    for param in head:
        param.grad = None
    head_ids = {id(p) for p in head}
    block_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    for param in block_params:
        param.requires_grad_(False)  # their dropped-depth gradients stay in .grad
    model(**batch).loss.backward()
    for param in block_params:
        param.requires_grad_(True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--test-rows", type=int, default=400)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.every, args.warm, args.test_rows, args.seeds = 4, 2, 2, 32, "0"
    seeds = [int(s) for s in args.seeds.split(",")]
    info = machine()
    results: dict[str, dict[int, dict]] = {}
    for label, setting in _settings(args.warm).items():
        results[label] = {}
        for seed in seeds:
            out = curve(setting, seed, args.steps, args.every, args.lr, 16 * args.steps, args.test_rows)
            results[label][seed] = out
            print(f"{label} seed {seed}: {out}", flush=True)
    marks = list(range(args.every, args.steps + 1, args.every))
    rows = []
    for label, by_seed in results.items():
        mean = [sum(r["accuracy"][i] for r in by_seed.values()) / len(by_seed) for i in range(len(marks))]
        secs = sum(r["train_seconds"] for r in by_seed.values()) / len(by_seed)
        per_seed = " / ".join(f"{r['accuracy'][-1]:.3f}" for r in by_seed.values())
        blocks = sum(r["blocks_per_step"] for r in by_seed.values()) / len(by_seed)
        rows.append([label, *(f"{a:.3f}" for a in mean), per_seed, f"{blocks:.2f}", f"{secs:.1f}"])
    columns = ["setting", *(f"acc @{m}" for m in marks), "final per seed", "blocks/step", "train s"]
    markdown = header(
        "Causes of the learning cost of layer dropout (MiniLM, LoRA)", info, command_line(), args.quick
    )
    markdown += (
        f"One client, constant lr {args.lr:g}, batch 16 x 32 tokens, {args.test_rows} held-out examples, "
        f"accuracy of the FULL model, mean over seeds {seeds}.\n\n" + table(columns, rows) + "\n"
    )
    print(markdown)
    out_dir = QUICK_RESULTS if args.quick else RESULTS
    write_results(
        "stld_causes", out_dir, markdown, {"machine": info, "command": command_line(), "runs": results}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
