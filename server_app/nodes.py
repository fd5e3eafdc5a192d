"""Finding the federation's clients: wait for SuperNodes, then ask each who it is."""

from __future__ import annotations

import time
from typing import Any

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcore.config import NODE_DATA, RunConfig
from fedcore.core import wire
from fedcore.core.limits import clip_text
from fedcore.core.reply_schema import SchemaError, check_node_info
from fedcore.core.wire import config_to_dict, dict_to_config
from fedcore.methods.base import ClientInfo
from server_app.progress import Progress


def _silent(_: str) -> None:
    """The start-up query prints no progress lines."""


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


def client_info(node_id: int, info: dict[str, Any], cfg: RunConfig) -> ClientInfo:
    """A node's start-up statement, checked against the declared schema before anything reads it.

    With a shared dataset the node claims a partition (of the run's clients.num-partitions, or of its own
    num-partitions when that is 0); with node data (data.name='node') it states its example count and its
    node id is its identity. Raises SchemaError naming the key and the rule.
    """
    checked = check_node_info(info)
    num_examples = checked.pop(wire.NODE_NUM_EXAMPLES, 0)  # 0: not stated
    partition_id = checked.pop(wire.NODE_PARTITION_ID, None)
    stated_partitions = checked.pop(wire.NODE_NUM_PARTITIONS, 0)
    if cfg.data.name == NODE_DATA:
        if not num_examples:
            raise SchemaError(f"missing {[wire.NODE_NUM_EXAMPLES]} (a node with its own data states it)")
        return ClientInfo(node_id=node_id, partition_id=node_id, profile=checked, num_examples=num_examples)
    if partition_id is None:
        raise SchemaError(f"missing {[wire.NODE_PARTITION_ID]} (the run partitions {cfg.data.name!r})")
    partitions = cfg.clients.num_partitions or stated_partitions
    if not partitions:
        raise SchemaError(f"missing {wire.NODE_NUM_PARTITIONS} (and clients.num-partitions is 0)")
    if partition_id >= partitions:
        raise SchemaError(
            f"{wire.NODE_PARTITION_ID}={partition_id} is unknown: the data has {partitions} partitions"
        )
    return ClientInfo(node_id=node_id, partition_id=partition_id, profile=checked, num_examples=num_examples)


def query_clients(
    grid: Grid, node_ids: list[int], cfg: RunConfig, timeout_s: float, simulated: bool
) -> tuple[list[ClientInfo], dict[int, tuple[str, str]]]:
    """Ask every node for its data claim and profile (``simulated``: whether profiles are emulated).

    Returns the sound answers and, for every other node, (status, reason): ``unreachable`` when it did
    not answer or answered with an error, ``refused`` when its answer breaks the schema or names a
    partition another node already holds.
    """
    messages = [
        Message(
            RecordDict(
                {
                    wire.RUN_CONFIG: dict_to_config(cfg.to_flat()),
                    wire.RUN: dict_to_config({wire.SIMULATED: simulated}),
                }
            ),
            dst_node_id=node_id,
            message_type=f"{MessageType.QUERY}.{wire.INFO_QUERY}",
        )
        for node_id in node_ids
    ]
    failures = {node_id: ("unreachable", "no reply") for node_id in node_ids}
    text_limit = cfg.limits.text_chars
    collected = Progress(out=_silent).collect(grid, messages, timeout_s, "start-up", text_limit)
    for node_id, reason in collected.undecodable.items():
        failures[node_id] = ("refused", f"start-up reply: {reason}")
    holders: dict[int, ClientInfo] = {}
    for node_id, reply in sorted(collected.replies.items()):
        if reply.has_error():
            failures[node_id] = ("unreachable", clip_text(f"error: {reply.error.reason}", text_limit))
            continue
        try:
            record = reply.content.config_records[wire.NODE_INFO]
            if len(record) > cfg.limits.list_items:
                raise SchemaError(f"{len(record)} entries exceed limits.list-items={cfg.limits.list_items}")
            client = client_info(node_id, config_to_dict(record), cfg)
        except (KeyError, SchemaError) as exc:
            failures[node_id] = ("refused", clip_text(f"start-up reply: {exc}", text_limit))
            continue
        if client.partition_id in holders:
            holder = holders[client.partition_id].node_id
            failures[node_id] = ("refused", f"partition-id {client.partition_id} is held by node {holder}")
            continue
        holders[client.partition_id] = client
        failures.pop(node_id)
    return sorted(holders.values(), key=lambda c: c.partition_id), failures
