"""Is it the switching? STLD with the active blocks drawn every step against once per client round.

Layer dropout as the DropPEFT paper describes it draws a new set of active blocks at every iteration, and
on SmolLM2 a network that changes depth at every step learns far more slowly than the full one, while a
network of fixed depth learns normally (``stld_causes.md``, ``stld_protect.md``). This ablation keeps the
per-block drop rates (the ``sensitivity`` shape with its protected blocks) and changes only how often the
set is drawn: every step (the paper's STLD) or every ``--round-steps`` steps (one draw per client round of
the paper-cls testbed, which trains 5 local steps). The expected compute and activation memory per step
are the same; only the sequence of sub-networks differs. Protocol of stld_shapes.py: one client, LoRA
q/k/v/o, constant lr 1e-3, batch 16 x 32 tokens, BBC News (5 topics), full-depth accuracy on the testbed's
server validation split, seeds 0 and 1.

    python benchmarks/stld_resample.py      # -> benchmarks/results/stld_resample.{md,json}
"""

from __future__ import annotations

import argparse

import torch
from benchlib import RESULTS, command_line, header, machine, write_results
from stld_shapes import curve_table, run_curves, sensitivity_rates

from fedcore.mechanisms.layer_dropout import DropConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--round-steps", type=int, default=5)
    parser.add_argument("--rates", default="0.3,0.5")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine()
    _, scores = sensitivity_rates(0.3)
    settings: dict[str, tuple[tuple[float, ...], int]] = {"full depth": ((), 1)}
    for mean in (float(r) for r in args.rates.split(",")):
        rates = DropConfig(mean, "sensitivity").rates(len(scores), sensitivity=scores)
        settings[f"p={mean}, drawn every step"] = (rates, 1)
        settings[f"p={mean}, drawn every {args.round_steps} steps"] = (rates, args.round_steps)
    seeds = [int(s) for s in args.seeds.split(",")]
    curves = run_curves(settings, seeds, args.steps, args.every)
    marks = list(range(args.every, args.steps + 1, args.every))
    markdown = header("STLD: active blocks drawn every step or once per round", info, command_line(), False)
    markdown += (
        "Rates: the `sensitivity` shape (blocks above twice the median removal sensitivity never dropped). "
        f"One client, LoRA, constant lr 1e-3, batch 16 x 32 tokens, BBC News (5 topics); full-depth accuracy "
        f"on the server validation split, mean over seeds {seeds}; `train s`: mean training seconds "
        f"({args.threads} thread(s)).\n\n" + curve_table(curves, marks) + "\n"
    )
    print(markdown)
    write_results(
        "stld_resample",
        RESULTS,
        markdown,
        {
            "machine": info,
            "command": command_line(),
            "scores": scores,
            "settings": {k: {"rates": list(v[0]), "period": v[1]} for k, v in settings.items()},
            "curves": curves,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
