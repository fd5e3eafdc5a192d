"""The README's example output is the console table of the committed default run, not typed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_example", ROOT / "benchmarks" / "readme_example.py")
readme_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_example)


def test_readme_block_is_the_rendering_of_the_committed_run() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_example.readme_block(readme) == readme_example.render(), (
        "README's example output differs from the committed run: run `python benchmarks/readme_example.py`"
    )


def test_rendering_follows_the_metrics_file(tmp_path: Path) -> None:
    rows = [{"kind": "global", "round": 0, "accuracy": 0.5, "loss": 0.7}, {"kind": "client", "round": 1}]
    rows.append({"kind": "global", "round": 1, "accuracy": 0.812, "loss": 0.41, "clients_ok": 3})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    lines = readme_example.render(metrics).splitlines()
    assert lines[2].split() == [
        "round",
        "acc",
        "loss",
        "wall",
        "s",
        "MB",
        "down",
        "MB",
        "up",
        "peak",
        "MB",
        "ok",
        "bad",
    ]
    assert [line.split()[:3] for line in lines[3:5]] == [["0", "0.500", "0.7000"], ["1", "0.812", "0.4100"]]
    assert lines[4].split()[-2:] == ["3", "-"]
    assert len(lines) == 7
