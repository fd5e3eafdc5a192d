"""Is a layer-dropout model good on the sub-networks it trained and poor only at full depth, or poor on both?

A DropPEFT client trains sub-networks (a random subset of blocks per step) while the global model is
evaluated at full depth. This takes the final global model of finished runs (their checkpoints) and
measures, on the server's validation split (never the test split), its accuracy and loss at full depth and
under sub-networks drawn with the drop rates of the ``sensitivity`` shape (blocks the model cannot lose
protected) at several mean rates, as a DropPEFT client would draw them:

- a model trained at full depth (FedLoRA) that stays accurate on sub-networks says they compute about the
  same function, so training on them is not training a different model;
- a DropPEFT model better on its sub-networks than at full depth says the global model adapted to a
  shallower network than the one it is evaluated as (a train / eval mismatch);
- a DropPEFT model poor on both says its clients simply learned less.

    python benchmarks/stld_mismatch.py --runs RUN_DIR[,RUN_DIR...] --name stld_mismatch
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from benchlib import RESULTS, command_line, header, machine, table, write_results

from fedcore.config import RunConfig
from fedcore.core.layers import LayerMap
from fedcore.data.batching import make_batches
from fedcore.data.splits import server_splits
from fedcore.mechanisms.layer_dropout import DropConfig, only_blocks, sample_active_blocks
from fedcore.methods.base import proxy_sensitivity
from fedcore.model import build_model, load_tunable_state
from fedcore.training.evaluate import evaluate
from server_app.checkpoint import load_checkpoint

RATES = (0.15, 0.3)


def run_label(run_dir: Path) -> str:
    """The name of a finished paper_testbed run directory (``<stamp>-<variant>-s<seed>``)."""
    return run_dir.name


def measure(run_dir: Path, draws: int) -> dict:
    flat = json.loads((run_dir / "config.json").read_text())
    cfg = RunConfig.from_flat(flat)
    checkpoint = load_checkpoint(run_dir)
    splits = server_splits(cfg.data, cfg.model.task, cfg.seed)
    model, tokenizer = build_model(cfg, num_labels=splits.num_labels)
    load_tunable_state(model, checkpoint.global_state)
    batches = make_batches(splits.validation, tokenizer, cfg.model.task, cfg.model.max_length, 32)
    scores = checkpoint.planner_state.get("block_sensitivity") or proxy_sensitivity(cfg, model, tokenizer)
    num_blocks = LayerMap(model).num_blocks
    full = evaluate(model, batches, cfg.model.task)
    row: dict = {"round": checkpoint.round, "full": {"accuracy": full["accuracy"], "loss": full["loss"]}}
    generator = torch.Generator().manual_seed(cfg.seed)
    for rate in RATES:
        rates = DropConfig(rate, "sensitivity").rates(num_blocks, sensitivity=scores)
        results = []
        for _ in range(draws):
            with only_blocks(model, sample_active_blocks(rates, generator)):
                results.append(evaluate(model, batches, cfg.model.task))
        row[f"p{rate}"] = {
            "accuracy": statistics.mean(r["accuracy"] for r in results),
            "accuracy_min": min(r["accuracy"] for r in results),
            "accuracy_max": max(r["accuracy"] for r in results),
            "loss": statistics.mean(r["loss"] for r in results),
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", required=True, help="comma-separated run directories")
    parser.add_argument("--draws", type=int, default=8, help="sub-networks drawn per rate")
    parser.add_argument("--name", default="stld_mismatch")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    info = machine()
    rows = {run_label(Path(d)): measure(Path(d), args.draws) for d in args.runs.split(",")}
    cells = []
    for label, row in rows.items():
        cells.append(
            [
                label,
                row["round"],
                f"{row['full']['accuracy']:.3f} ({row['full']['loss']:.2f})",
                *(
                    f"{row[f'p{r}']['accuracy']:.3f} ({row[f'p{r}']['loss']:.2f}) "
                    f"[{row[f'p{r}']['accuracy_min']:.2f}-{row[f'p{r}']['accuracy_max']:.2f}]"
                    for r in RATES
                ),
            ]
        )
    markdown = header("Global models on their sub-networks and at full depth", info, command_line(), False)
    markdown += (
        f"Final global model of each run (checkpoint), server validation split; accuracy (loss) at full "
        f"depth "
        f"and the mean over {args.draws} sub-networks drawn with the protected `sensitivity` rates at each "
        f"mean rate [min-max accuracy]. {args.note}\n\n"
        + table(["run", "round", "full depth", *(f"sub-networks p={r}" for r in RATES)], cells)
        + "\n"
    )
    print(markdown)
    write_results(args.name, RESULTS, markdown, {"machine": info, "command": command_line(), "runs": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
