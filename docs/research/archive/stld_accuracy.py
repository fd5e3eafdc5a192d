"""Layer dropout and learning speed: full-depth accuracy after K local steps trained with STLD.

Why: layer dropout makes each step cheaper, but a model that skips blocks also learns differently. This
trains the real MiniLM (LoRA, the default tuning) on one balanced slice of Rotten Tomatoes for K steps with
each dropout configuration, from the same start, batches and seed, then evaluates the FULL model on held-out
examples, as a federation's server would. It shows how many steps a drop rate costs in learning, and what
progressive dropping (``drop.warmup``: rates ramped up from 0) recovers. One client, no federation: the
number isolates layer dropout from aggregation and label skew.

    python benchmarks/stld_accuracy.py                    # writes benchmarks/results/stld_accuracy.*
    python benchmarks/stld_accuracy.py --steps 4 --quick  # smoke test, writes benchmarks/results/quick/
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from benchlib import MINILM, QUICK_RESULTS, RESULTS, command_line, header, machine, table, write_results

from fedcore.config import RunConfig
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.data.batching import make_batches
from fedcore.data.tables import load_dataset_table
from fedcore.mechanisms.layer_dropout import DropConfig
from fedcore.model import build_model
from fedcore.training.evaluate import evaluate
from fedcore.training.train import train_plan


@dataclass(frozen=True)
class Setting:
    mean_rate: float
    shape: str
    warmup: float

    @property
    def label(self) -> str:
        if self.mean_rate == 0:
            return "full depth"
        ramp = f", warm-up {self.warmup:g}" if self.warmup else ""
        return f"p={self.mean_rate:g} {self.shape}{ramp}"


SETTINGS = (
    Setting(0.0, "uniform", 0.0),
    Setting(0.15, "uniform", 0.0),
    Setting(0.3, "uniform", 0.0),
    Setting(0.3, "uniform", 0.5),
)


def run(setting: Setting, steps: int, cfg: RunConfig, train_rows: int, test_rows: int) -> dict[str, float]:
    model, tokenizer = build_model(cfg, num_labels=2)
    table_ = load_dataset_table(cfg.data, "seq-cls", cfg.seed).shuffle(seed=cfg.seed)
    test, train = table_.select(range(test_rows)), table_.select(range(test_rows, test_rows + train_rows))
    num_blocks = LayerMap(model).num_blocks
    rates = DropConfig(setting.mean_rate, setting.shape).rates(num_blocks) if setting.mean_rate else ()
    plan = LayerPlan(
        round=1,
        rounds=1,
        train_groups=tuple(LayerMap(model).all_groups()),
        drop_rates=tuple(rates),
        drop_warmup=setting.warmup,
        steps=steps,
        lr=cfg.learning_rate,
        seed=cfg.seed,
    )
    batches = make_batches(train, tokenizer, "seq-cls", cfg.model.max_length, cfg.train.batch_size, cfg.seed)
    began = time.perf_counter()
    outcome = train_plan(model, batches, plan, warmup_fraction=cfg.train.warmup_fraction)
    seconds = time.perf_counter() - began
    test_batches = make_batches(test, tokenizer, "seq-cls", cfg.model.max_length, cfg.eval.batch_size)
    metrics = evaluate(model, test_batches, "seq-cls")
    return {
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "train_loss": outcome.metrics["train_loss"],
        "blocks_per_step": outcome.metrics["mean_active_blocks"],
        "train_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="40,120", help="comma-separated local step counts K")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--test-examples", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="smoke test: few examples")
    args = parser.parse_args()
    if args.quick:
        args.train_examples, args.test_examples = 64, 32
    info, command = machine(), command_line()
    cfg = RunConfig.from_flat({"model.name": MINILM})
    rows, results = [], []
    for steps in (int(s) for s in args.steps.split(",")):
        for setting in SETTINGS:
            result = run(setting, steps, cfg, args.train_examples, args.test_examples)
            results.append({"steps": steps, "setting": setting.label, **result})
            rows.append(
                [
                    steps,
                    setting.label,
                    f"{result['blocks_per_step']:.2f}",
                    f"{result['train_s']:.1f}",
                    f"{result['train_loss']:.3f}",
                    f"{result['loss']:.3f}",
                    f"{result['accuracy']:.3f}",
                ]
            )
            print(rows[-1], flush=True)
    columns = ["K", "setting", "blocks run/step", "train s", "train loss", "full-depth loss", "accuracy"]
    body = table(columns, rows)
    markdown = "\n".join(
        [
            header("Layer dropout and learning speed (MiniLM, LoRA)", info, command, args.quick),
            f"One client, {args.train_examples} training and {args.test_examples} held-out Rotten Tomatoes "
            f"examples (shuffled with the run seed), batch {cfg.train.batch_size}, LoRA lr "
            f"{cfg.learning_rate:g} with the default warm-up and linear decay over the K steps. Accuracy is "
            "the full-depth model's on the held-out examples.",
            "",
            body,
        ]
    )
    data = {"machine": info, "command": command, "results": results}
    md, _ = write_results("stld_accuracy", QUICK_RESULTS if args.quick else RESULTS, markdown, data)
    print(f"\n{body}\n\nwrote {md}")


if __name__ == "__main__":
    main()
