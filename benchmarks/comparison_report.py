"""The comparison report: ``fedlayer report``'s table of the runs, their accuracy per round side by side,
and what each run's server planner chose (DropPEFT's arms, LEFF's windows and distillation cost)."""

from __future__ import annotations

import json
from collections import Counter

from benchmarks.benchlib import table
from fedcore.cli.report import RunRecord, comparison_table, to_markdown


def accuracy_by_round(runs: list[RunRecord]) -> str:
    """Server-split accuracy per round, one column per run: the trajectories behind the summary table."""
    rounds = sorted({int(r) for run in runs for r in run.global_rows["round"].dropna()})
    rows = []
    for round_number in rounds:
        row: list[object] = [round_number]
        for run in runs:
            hit = run.global_rows[run.global_rows["round"] == round_number]["accuracy"].dropna()
            row.append(f"{float(hit.iloc[0]):.3f}" if len(hit) else "-")
        rows.append(row)
    return table(["round", *(run.name for run in runs)], rows)


def planner_decisions(runs: list[RunRecord]) -> str:
    """What the server's planner chose each round: DropPEFT's arms, LEFF's windows and distillation cost."""
    rows = []
    for run in runs:
        for line in (run.path / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            state = row.get("planner") if row.get("kind") == "global" else None
            if not isinstance(state, dict):
                continue
            if "choices" in state:
                arms = Counter(state["choices"].values())
                decision = ", ".join(f"{arm} x{n}" for arm, n in sorted(arms.items()))
                cost = "-"
            elif "windows" in state:
                decision = " ".join(f"{start}+{width}" for start, width in state["windows"].values())
                rate = state.get("cache_hit_rate")
                hit = "-" if rate is None else f"{rate:.2f}"
                cost = f"distill {state.get('distill_seconds', 0.0):.1f} s, cache hit rate {hit}"
            else:
                continue
            rows.append([run.name, row["round"], decision, cost])
    if not rows:
        return ""
    return table(["run", "round", "decision (arm x clients / window start+width per client)", "server"], rows)


def comparison_report(runs: list[RunRecord], target: float) -> str:
    """The report's Markdown body."""
    markdown = f"{to_markdown(comparison_table(runs, target=target))}\n\n### Accuracy per round\n\n"
    markdown += f"{accuracy_by_round(runs)}\n"
    decisions = planner_decisions(runs)
    return markdown + (f"\n### Planner decisions\n\n{decisions}\n" if decisions else "")
