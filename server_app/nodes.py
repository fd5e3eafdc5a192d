"""Finding the federation's clients: wait for SuperNodes, then ask each who it is."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcore.config import NODE_DATA, RunConfig
from fedcore.core import wire
from fedcore.core.limits import clip_text
from fedcore.core.reply_schema import SchemaError, check_node_info
from fedcore.core.wire import config_to_dict, dict_to_config
from fedcore.data.splits import client_splits
from fedcore.data.tables import DataError
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


def client_info(
    node_id: int,
    info: dict[str, Any],
    num_partitions: int,
    partition_size: Callable[[int, int], int] | None = None,
    *,
    node_data: bool = False,
) -> ClientInfo:
    """A node's start-up statement, checked against the declared schema before anything reads it.

    ``num_partitions``: the run's clients.num-partitions, 0 = the node's own num-partitions.
    ``partition_size(partition_id, num_partitions)``: the server's own count of a partition's training
    examples, when it partitions a shared dataset; a statement that contradicts it is refused.
    ``node_data``: the run trains every node on its own data (data.name='node'); the node claims no
    partition, states its example count, and its node id is its identity.
    Raises SchemaError naming the key and the rule.
    """
    checked = check_node_info(info)
    num_examples = checked.pop(wire.NODE_NUM_EXAMPLES, 0)  # 0: not stated
    partition_id = checked.pop(wire.NODE_PARTITION_ID, None)
    stated_partitions = checked.pop(wire.NODE_NUM_PARTITIONS, 0)
    if node_data:
        if not num_examples:
            raise SchemaError(f"missing {[wire.NODE_NUM_EXAMPLES]} (a node with its own data states it)")
        return ClientInfo(node_id, node_id, profile=checked, num_examples=num_examples)
    if partition_id is None:
        raise SchemaError(f"missing {[wire.NODE_PARTITION_ID]} (the run partitions a shared dataset)")
    partitions = num_partitions or stated_partitions
    if not partitions:
        raise SchemaError(f"missing {wire.NODE_NUM_PARTITIONS} (and clients.num-partitions is 0)")
    if partition_id >= partitions:
        raise SchemaError(
            f"{wire.NODE_PARTITION_ID}={partition_id} is unknown: the data has {partitions} partitions"
        )
    if partition_size is None:
        return ClientInfo(node_id, partition_id, profile=checked, num_examples=num_examples)
    size = partition_size(partition_id, partitions)
    if num_examples and num_examples != size:
        raise SchemaError(
            f"{wire.NODE_NUM_EXAMPLES}={num_examples}, but partition-id {partition_id} of {partitions} "
            f"has {size} training examples"
        )
    return ClientInfo(node_id, partition_id, profile=checked, num_examples=size, examples_checked=True)


def query_clients(
    grid: Grid, node_ids: list[int], cfg: RunConfig, timeout_s: float, bound: dict[int, int], simulated: bool
) -> tuple[list[ClientInfo], dict[int, tuple[str, str]]]:
    """Ask every node for its data claim and profile (``bound``: partitions held earlier in this run;
    ``simulated``: whether clients emulate their device profiles).

    Returns the sound answers by partition and, for every other node, (status, reason): ``unreachable``
    when it did not answer or answered with an error, ``refused`` when its answer breaks the schema or
    claims a partition it cannot have (assign_partitions).
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

    def partition_size(partition_id: int, num_partitions: int) -> int:
        try:
            splits = client_splits(cfg.data, cfg.model.task, cfg.seed, partition_id, num_partitions)
        except DataError as exc:
            raise SchemaError(f"{wire.NODE_NUM_PARTITIONS}={num_partitions}: {exc}") from None
        return len(splits.train)

    text_limit = cfg.limits.text_chars
    collected = Progress(out=_silent).collect(grid, messages, timeout_s, "start-up", text_limit)
    for node_id, reason in collected.undecodable.items():
        failures[node_id] = ("refused", f"start-up reply: {reason}")
    claims: dict[int, ClientInfo] = {}
    for node_id, reply in sorted(collected.replies.items()):
        if reply.has_error():
            failures[node_id] = ("unreachable", clip_text(f"error: {reply.error.reason}", text_limit))
            continue
        try:
            record = reply.content.config_records[wire.NODE_INFO]
            if len(record) > cfg.limits.list_items:
                raise SchemaError(f"{len(record)} entries exceed limits.list-items={cfg.limits.list_items}")
            stated = config_to_dict(record)
            if cfg.data.name == NODE_DATA:  # the server holds no partition to count
                claims[node_id] = client_info(node_id, stated, 0, node_data=True)
            else:
                claims[node_id] = client_info(node_id, stated, cfg.clients.num_partitions, partition_size)
        except (KeyError, SchemaError) as exc:
            failures[node_id] = ("refused", clip_text(f"start-up reply: {exc}", text_limit))
    accepted, refused = assign_partitions(claims, bound)
    for client in accepted:
        failures.pop(client.node_id)
    failures.update(refused)
    return accepted, failures


def assign_partitions(
    claims: dict[int, ClientInfo], bound: dict[int, int]
) -> tuple[list[ClientInfo], dict[int, tuple[str, str]]]:
    """Each partition to one node: the node that held it earlier in this run (``bound``: partition ->
    node id, kept by checkpoints) when it claims it again, else its only claimant. A partition two nodes
    claim and neither held goes to neither: the server cannot tell which one states the truth, and
    refusing both names the conflict instead of handing the data's weight to whichever answered first.

    Returns the accepted clients by partition and, for every other claimant, ("refused", reason).
    """
    by_partition: dict[int, list[ClientInfo]] = {}
    for client in claims.values():
        by_partition.setdefault(client.partition_id, []).append(client)
    accepted: list[ClientInfo] = []
    refused: dict[int, tuple[str, str]] = {}
    for partition, claimants in sorted(by_partition.items()):
        holder = next((c for c in claimants if c.node_id == bound.get(partition)), None)
        if holder is None and len(claimants) == 1:
            holder = claimants[0]
        if holder is not None:
            accepted.append(holder)
        ids = ", ".join(str(c.node_id) for c in claimants)
        for client in claimants:
            if client is holder:
                continue
            if holder is not None:
                reason = f"partition-id {partition} is held by node {holder.node_id} in this run"
            else:
                reason = (
                    f"partition-id {partition} is claimed by nodes {ids}; give each node its own partition-id"
                )
            refused[client.node_id] = ("refused", reason)
    return accepted, refused
