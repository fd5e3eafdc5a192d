"""Live progress of a round while the clients' replies come in.

``grid.send_and_receive`` blocks until every reply is in or the timeout passes, so a long round prints
nothing. Here the messages are pushed, and replies pulled as they arrive (the same deadline: the round's
``round.timeout`` from the moment the messages were sent), printing one plain line at a time:

    [round 3/10] 4/10 replies in, 1 failed, 42 s elapsed, eta 1 min 10 s

Lines are whole lines (no carriage returns or cursor movement), so they read the same in a terminal, in
a log file and in ``flwr run --stream``. The ETA is the median collection time of this run's previous
rounds minus the time elapsed (this project's choice: rounds of one run have similar work).

Each pending reply is pulled on its own: Flower decodes every reply of one pull together, so a single
reply that cannot be decoded (a tensor name listed twice, a broken object tree) would raise for all of
them and end the run. Pulled alone, it costs only its sender's reply, which comes back as ``undecodable``
with the reason. The price is one pull request per pending reply per poll.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

from fedcore.core.limits import clip_text

#: how often the SuperLink is asked for new replies
POLL_S = 0.5
#: a new reply is reported at most this often (many clients answering together give one line)
MIN_GAP_S = 5.0
#: with no new reply, a line still shows every so often that the round is alive
HEARTBEAT_S = 30.0
#: what decoding a malformed reply raises inside Flower (network failures are none of these and still raise)
UNDECODABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError)


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
class Collected:
    """A round's answers by node: decoded replies, and the reason for each reply that could not be decoded."""

    replies: dict[int, Message] = field(default_factory=dict)
    undecodable: dict[int, str] = field(default_factory=dict)


def pull_each(grid: Grid, pending: set[str], text_limit: int) -> tuple[list[Message], dict[str, str]]:
    """Pull every pending reply on its own; returns the decoded ones and, by message id, why others failed."""
    arrived: list[Message] = []
    failed: dict[str, str] = {}
    for message_id in sorted(pending):
        try:
            arrived.extend(grid.pull_messages([message_id]))
        except UNDECODABLE as exc:
            failed[message_id] = clip_text(f"undecodable reply ({type(exc).__name__}: {exc})", text_limit)
    return arrived, failed


def by_node(replies: list[Message], node_of: Mapping[str, int]) -> dict[int, Message]:
    """Replies keyed by the node each answers for (``node_of``: sent message id -> its node): the SuperLink
    itself answers for an unreachable node (its error reply comes from the SuperLink's id), so match on the
    message replied to."""
    return {node_of.get(r.metadata.reply_to_message_id, r.metadata.src_node_id): r for r in replies}


@dataclass
class Progress:
    """Collects a round's replies with progress lines; remembers each round's collection time for the ETA."""

    out: Callable[[str], None] = field(default=_print_line)
    durations: list[float] = field(default_factory=list)

    def collect(
        self, grid: Grid, messages: list[Message], timeout_s: float, label: str, text_limit: int
    ) -> Collected:
        """Push the messages and pull replies until all are in or ``timeout_s`` has passed since sending.

        ``text_limit``: the longest text kept from a reason that quotes the reply (limits.text-chars).
        """
        began = time.monotonic()
        pending = {message_id for message_id in grid.push_messages(messages) if message_id}
        status = RoundStatus(
            label, len(messages), estimate_s=statistics.median(self.durations) if self.durations else None
        )
        self.out(status.line())
        replies: list[Message] = []
        failed: dict[str, str] = {}
        last_line = time.monotonic()
        while pending:
            time.sleep(POLL_S)
            arrived, broken = pull_each(grid, pending, text_limit)
            replies.extend(arrived)
            failed.update(broken)
            pending -= {reply.metadata.reply_to_message_id for reply in arrived} | set(broken)
            now = time.monotonic()
            status.received = len(replies) + len(failed)
            status.failed = sum(reply.has_error() for reply in replies) + len(failed)
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
        node_of = {message.metadata.message_id: message.metadata.dst_node_id for message in messages}
        return Collected(by_node(replies, node_of), {node_of[mid]: reason for mid, reason in failed.items()})
