"""The per-round progress table printed while a federation runs."""

from __future__ import annotations

from typing import Any

from fedcore.core import wire

# (row key, title, width, number format); bytes are shown in MB
_COLUMNS = [
    ("round", "round", 5, "d"),
    ("accuracy", "acc", 6, ".3f"),
    ("perplexity", "ppl", 8, ".2f"),
    ("loss", "loss", 7, ".4f"),
    ("round_wall_time_s", "wall s", 7, ".1f"),
    (wire.BYTES_DOWN, "MB down", 8, ".2f"),
    (wire.BYTES_UP, "MB up", 7, ".2f"),
    ("max_client_peak_rss_mb", "peak MB", 8, ".0f"),
    ("clients_ok", "ok", 3, "d"),
    ("clients_failed", "bad", 3, "d"),
]


def _columns(task: str) -> list[tuple[str, str, int, str]]:
    hidden = "accuracy" if task == "causal-lm" else "perplexity"
    return [column for column in _COLUMNS if column[0] != hidden]


def header(task: str) -> str:
    return " ".join(title.rjust(width) for _, title, width, _ in _columns(task))


def line(row: dict[str, Any], task: str) -> str:
    cells = []
    for key, _, width, spec in _columns(task):
        value = row.get(key)
        if value is None:
            cells.append("-".rjust(width))
            continue
        if key in (wire.BYTES_DOWN, wire.BYTES_UP):
            value = value / 1e6
        cells.append(format(value, f">{width}{spec}"))
    return " ".join(cells)
