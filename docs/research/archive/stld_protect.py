"""Does STLD on a pretrained decoder learn slowly because some steps drop a block the model cannot lose?

On SmolLM2-135M a few blocks carry the model (removing block 0, 1, 2 or 11 alone costs 1.7-6.8 nats of LM
loss, a typical block 0.1-0.3; ``stld_shapes.md``). The ``sensitivity`` shape gives them low but non-zero
rates, so about one step in four still drops one of them, and that step trains the head and the adapters
on features the full model never produces. This ablation protects every block whose removal sensitivity
exceeds twice the median (rate 0, the ``sensitivity`` shape's rule) and spreads the same mean rate over
the rest, beside full depth and the graded weights alone (``sensitivity 0.3``: nothing protected), with
stld_shapes.py's protocol (one client, LoRA q/k/v/o, constant lr 1e-3, batch 16 x 32 tokens, BBC News
5 topics, full-depth accuracy on the server validation split).

    python benchmarks/stld_protect.py      # -> benchmarks/results/stld_protect.{md,json}
"""

from __future__ import annotations

import argparse

import torch
from benchlib import RESULTS, command_line, header, machine, write_results
from stld_shapes import RATE, curve_table, run_curves, sensitivity_rates

from fedcore.mechanisms.layer_dropout import PROTECT_FACTOR, DropConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = machine()
    by_sensitivity, scores = sensitivity_rates(RATE)
    protected = DropConfig(RATE, "sensitivity").rates(len(scores), sensitivity=scores)
    settings = {
        "full depth": (),
        f"sensitivity {RATE}": by_sensitivity,
        f"sensitivity {RATE}, protected": protected,
    }
    seeds = [int(s) for s in args.seeds.split(",")]
    curves = run_curves({k: (tuple(v), 1) for k, v in settings.items()}, seeds, args.steps, args.every)
    marks = list(range(args.every, args.steps + 1, args.every))
    protected_blocks = [i for i, r in enumerate(protected) if r == 0]
    markdown = header(
        "STLD with the blocks a pretrained decoder cannot lose protected", info, command_line(), False
    )
    markdown += (
        f"Protected (rate 0, sensitivity > {PROTECT_FACTOR} x median): blocks {protected_blocks}; "
        f"rates of the others: {', '.join(f'{r:.2f}' for r in protected if r > 0)}. "
        f"One client, LoRA, constant lr 1e-3, batch 16 x 32 tokens, BBC News (5 topics); full-depth accuracy "
        f"on the server validation split, mean over seeds {seeds}.\n\n" + curve_table(curves, marks) + "\n"
    )
    print(markdown)
    write_results(
        "stld_protect",
        RESULTS,
        markdown,
        {
            "machine": info,
            "command": command_line(),
            "scores": scores,
            "rates": {k: list(v) for k, v in settings.items()},
            "curves": curves,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
