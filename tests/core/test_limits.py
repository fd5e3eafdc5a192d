"""What a client controls in size is bounded before the server works on it, and what is kept says so."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedcore.core.limits import check_record, clip_text


def test_a_long_text_keeps_its_start_and_end_and_says_how_much_was_cut() -> None:
    text = "Traceback: " + "x" * 10_000_000 + " ValueError: speed=inf"
    clipped = clip_text(text, 1000)
    assert len(clipped) < 1100
    assert clipped.startswith("Traceback: ") and clipped.endswith("ValueError: speed=inf")
    assert f"of {len(text)} characters cut" in clipped
    assert clip_text("short", 1000) == "short" and clip_text(text, 0) == text


def record(**shapes: tuple[int, ...]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.zeros(shape, dtype=np.float32)) for name, shape in shapes.items()})


EXPECTED = {"a.w": (4, 4), "b.w": (8,)}


@pytest.mark.parametrize(
    ("sent", "max_bytes", "max_items", "reason"),
    [
        (record(**{"a.w": (4, 4), "b.w": (8,), "c.w": (1,)}), 1e9, 100, "3 tensors, but the plan expects"),
        (record(**{"a.w": (4, 4), "b.w": (8,)}), 1e9, 1, "2 tensors exceed limits.list-items=1"),
        (record(**{"z" * 500: (1,)}), 1e9, 100, "unexpected tensor 'zzz"),
        (record(**{"a.w": (4, 5)}), 1e9, 100, r"a.w: shape \(4, 5\) != expected \(4, 4\)"),
        (record(**{"a.w": (4, 4), "b.w": (8,)}), 50, 100, "exceed limits.reply-mb"),
    ],
)
def test_a_reply_is_refused_by_what_its_tensors_declare(
    sent: ArrayRecord, max_bytes: float, max_items: int, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason) as error:
        check_record(sent, EXPECTED, max_bytes, max_items)
    assert len(str(error.value)) < 300


def test_a_reply_within_the_plan_passes() -> None:
    check_record(record(**{"a.w": (4, 4)}), EXPECTED, 1e9, 100)
