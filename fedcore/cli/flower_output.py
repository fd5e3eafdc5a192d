"""Flower's console output as ``fedlayer simulate`` passes it on: without notices a fedlayer run cannot act
on, and without colour codes when it goes to a file.

flwr 1.39's simulation process logs, on every run whatever the federation size, that the default number of
simulated SuperNodes changed and how to change it (``fedlayer simulate --supernodes`` sets it), and Ray logs
a warning for each client actor it stops at the end of a run. Flower's logger always colours the level
names, with no setting to turn it off; the codes are kept only when the output is a terminal. Every other
line passes unchanged. Which lines are dropped is the project's own choice, listed here one by one.
"""

from __future__ import annotations

import re

#: text that identifies each dropped notice (matched after colour codes are removed)
KNOWN_NOTICES: tuple[str, ...] = (
    "Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
    "To change federation size, use the following command:",
    "flwr federation simulation-config ",  # the command that line announces
    "Manually terminating ClientAppActor",
)
_COLOUR_CODE = re.compile(r"\x1b\[[0-9;]*m")


def without_colour(text: str) -> str:
    return _COLOUR_CODE.sub("", text)


def shown_line(line: str, colour: bool) -> str | None:
    """The line as shown (colour codes removed unless ``colour``), or None for a known notice."""
    plain = without_colour(line)
    if any(notice in plain for notice in KNOWN_NOTICES):
        return None
    return line if colour else plain
