"""Bounds on what a client controls in size: texts the server keeps, and how they are cut."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Travelled(Protocol):
    """A tensor as it travelled (Flower's ``Array``): its declared shape and its serialised bytes."""

    shape: tuple[int, ...]
    data: bytes


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying so (0 = no limit). Its start and its end are
    kept: an error's traceback ends with the line that says what went wrong."""
    if not limit or len(text) <= limit:
        return text
    head, tail = text[: limit // 2], text[len(text) - limit // 2 :]
    return f"{head} [... {len(text) - len(head) - len(tail)} of {len(text)} characters cut ...] {tail}"


def check_record(
    arrays: Mapping[str, Travelled], expected: Mapping[str, tuple[int, ...]], max_bytes: float, max_items: int
) -> None:
    """Refuse a reply's tensors by what they declare, before any is decoded: no more tensors than the
    plan expects (nor ``max_items``), only names it expects, each of its shape, ``max_bytes`` in all.

    Raises ValueError with a short reason (names cut to 80 characters).
    """
    if len(arrays) > max_items:
        raise ValueError(f"{len(arrays)} tensors exceed limits.list-items={max_items}")
    if len(arrays) > len(expected):
        raise ValueError(f"{len(arrays)} tensors, but the plan expects at most {len(expected)}")
    total = 0
    for name, array in arrays.items():
        if name not in expected:
            raise ValueError(f"unexpected tensor {clip_text(name, 80)!r} for this plan")
        if tuple(array.shape) != tuple(expected[name]):
            raise ValueError(f"{name}: shape {tuple(array.shape)} != expected {tuple(expected[name])}")
        total += len(array.data)
    if total > max_bytes:
        raise ValueError(f"tensors of {total / 1e6:.1f} MB exceed limits.reply-mb={max_bytes / 1e6:g}")
