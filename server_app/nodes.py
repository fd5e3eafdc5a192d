"""Finding the federation's clients: wait for SuperNodes, then ask each who it is."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcore.core import wire
from fedcore.core.wire import config_to_dict, dict_to_config
from fedcore.methods.base import ClientInfo


def wait_for_nodes(grid: Grid, minimum: int, timeout_s: float, poll_s: float = 1.0) -> list[int]:
    """Node ids once at least `minimum` are connected (right after start, simulation reports none)."""
    deadline = time.monotonic() + timeout_s
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= minimum:
            return node_ids
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(node_ids)} SuperNode(s) connected after {timeout_s:.0f} s; clients.min={minimum}"
            )
        time.sleep(poll_s)


def replies_by_node(replies: Iterable[Message], sent: list[Message]) -> dict[int, Message]:
    """Replies keyed by the node each answers for: the SuperLink itself answers for an unreachable node
    (its error reply comes from the SuperLink's id), so match on the message replied to."""
    node_of = {message.metadata.message_id: message.metadata.dst_node_id for message in sent}
    return {node_of.get(r.metadata.reply_to_message_id, r.metadata.src_node_id): r for r in replies}


def query_clients(
    grid: Grid, node_ids: list[int], flat_config: dict, timeout_s: float
) -> tuple[list[ClientInfo], dict[int, str]]:
    """Ask every node for its partition and profile; returns (answers, {node id: failure reason})."""
    messages = [
        Message(
            RecordDict({wire.RUN_CONFIG: dict_to_config(flat_config)}),
            dst_node_id=node_id,
            message_type=f"{MessageType.QUERY}.{wire.INFO_QUERY}",
        )
        for node_id in node_ids
    ]
    clients: list[ClientInfo] = []
    failures = {node_id: "no reply" for node_id in node_ids}
    for node_id, reply in replies_by_node(
        grid.send_and_receive(messages, timeout=timeout_s), messages
    ).items():
        if reply.has_error():
            failures[node_id] = f"error: {reply.error.reason}"
            continue
        info = config_to_dict(reply.content.config_records[wire.NODE_INFO])
        clients.append(
            ClientInfo(
                node_id=node_id,
                partition_id=int(info.pop(wire.NODE_PARTITION_ID)),
                profile=info,
            )
        )
        failures.pop(node_id)
    return sorted(clients, key=lambda c: c.partition_id), failures
