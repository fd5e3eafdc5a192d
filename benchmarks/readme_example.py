"""Render the README's example output from a committed run's metrics file, so the two cannot differ.

``python benchmarks/readme_example.py [METRICS_JSONL]`` formats the run's global rows with the console
table ``make run`` prints (``server_app/console.py``) and rewrites the block between the README's
markers. ``tests/test_readme_example.py`` fails when the README's block is not this rendering of the
committed file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from server_app import console

ROOT = Path(__file__).resolve().parents[1]
#: the committed default run whose rows the README shows
METRICS = ROOT / "benchmarks" / "results" / "default-run-fedlora.metrics.jsonl"
README = ROOT / "README.md"
START = "<!-- readme-example:start (rendered by benchmarks/readme_example.py; do not edit) -->"
END = "<!-- readme-example:end -->"


def render(metrics: Path = METRICS) -> str:
    """The console table of the run's global rows, as a fenced block between the markers."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    table = [console.header("seq-cls")]
    table += [console.line(row, "seq-cls") for row in rows if row.get("kind") == "global"]
    return "\n".join([START, "```", *table, "```", END])


def readme_block(readme: str) -> str:
    """The README's current block, markers included; an error if the markers are missing."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {START!r} ... {END!r}")
    return readme[start : end + len(END)]


def main(args: list[str]) -> int:
    metrics = Path(args[0]) if args else METRICS
    readme = README.read_text()
    README.write_text(readme.replace(readme_block(readme), render(metrics)))
    print(f"README.md: example output rendered from {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
