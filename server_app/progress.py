"""Live progress of a round while the clients' replies come in.

``grid.send_and_receive`` blocks until every reply is in or the timeout passes, so a long round prints
nothing. Here the messages are pushed, and replies pulled as they arrive (the same deadline: the round's
``round.timeout`` from the moment the messages were sent), printing one plain line at a time:

    [round 3/10] 4/10 replies in, 1 failed, 42 s elapsed, eta 1 min 10 s

Lines are whole lines (no carriage returns or cursor movement), so they read the same in a terminal, in
a log file and in ``flwr run --stream``. The ETA is the median collection time of this run's previous
rounds minus the time elapsed (this project's choice: rounds of one run have similar work).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

#: how often the SuperLink is asked for new replies
POLL_S = 0.5
#: a new reply is reported at most this often (many clients answering together give one line)
MIN_GAP_S = 5.0
#: with no new reply, a line still shows every so often that the round is alive
HEARTBEAT_S = 30.0


def duration(seconds: float) -> str:
    """Short human form: '42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class RoundStatus:
    """What one progress line says."""

    label: str
    expected: int
    received: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    estimate_s: float | None = None
    timed_out: bool = False

    def line(self) -> str:
        parts = [f"{self.received}/{self.expected} replies in", f"{self.failed} failed"]
        if self.timed_out:
            parts.append(f"{self.expected - self.received} without reply by the deadline")
        parts.append(f"{duration(self.elapsed_s)} elapsed")
        if self.received < self.expected and not self.timed_out:
            parts.append(self._eta())
        return f"[{self.label}] " + ", ".join(parts)

    def _eta(self) -> str:
        if self.estimate_s is None:
            return "eta after the first round"
        left = self.estimate_s - self.elapsed_s
        if left < 0:
            return f"eta overdue (earlier rounds took {duration(self.estimate_s)})"
        return f"eta {duration(left)}"


def _print_line(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


@dataclass
class Progress:
    """Collects a round's replies with progress lines; remembers each round's collection time for the ETA."""

    out: Callable[[str], None] = field(default=_print_line)
    durations: list[float] = field(default_factory=list)

    def collect(self, grid: Grid, messages: list[Message], timeout_s: float, label: str) -> list[Message]:
        """Push the messages and pull replies until all are in or ``timeout_s`` has passed since sending."""
        began = time.monotonic()
        pending = {message_id for message_id in grid.push_messages(messages) if message_id}
        status = RoundStatus(
            label, len(messages), estimate_s=statistics.median(self.durations) if self.durations else None
        )
        self.out(status.line())
        replies: list[Message] = []
        last_line = time.monotonic()
        while pending:
            time.sleep(POLL_S)
            arrived = list(grid.pull_messages(pending))
            replies.extend(arrived)
            pending -= {reply.metadata.reply_to_message_id for reply in arrived}
            now = time.monotonic()
            status.received = len(replies)
            status.failed = sum(reply.has_error() for reply in replies)
            status.elapsed_s = now - began
            if not pending:
                break
            if now - began >= timeout_s:
                status.timed_out = True
                break
            if (arrived and now - last_line >= MIN_GAP_S) or now - last_line >= HEARTBEAT_S:
                self.out(status.line())
                last_line = now
        self.out(status.line())
        self.durations.append(time.monotonic() - began)
        return replies
