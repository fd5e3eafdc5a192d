"""Which node trains which partition: a claim is bound to the node that held it in this run."""

from __future__ import annotations

from fedcore.methods.base import ClientInfo
from server_app.nodes import assign_partitions


def claims(*pairs: tuple[int, int]) -> dict[int, ClientInfo]:
    return {node: ClientInfo(node_id=node, partition_id=partition) for node, partition in pairs}


def test_a_partition_held_earlier_in_the_run_stays_with_its_node() -> None:
    """After a resume, a node claiming another's partition is refused even if it answered first."""
    accepted, refused = assign_partitions(claims((5, 1), (9, 1), (7, 0)), bound={1: 9, 0: 7})
    assert [(c.node_id, c.partition_id) for c in accepted] == [(7, 0), (9, 1)]
    assert refused == {5: ("refused", "partition-id 1 is held by node 9 in this run")}


def test_a_partition_contested_at_the_first_start_goes_to_neither_claimant() -> None:
    accepted, refused = assign_partitions(claims((5, 1), (9, 1), (7, 0)), bound={})
    assert [c.node_id for c in accepted] == [7]
    reason = "partition-id 1 is claimed by nodes 5, 9; give each node its own partition-id"
    assert refused == {5: ("refused", reason), 9: ("refused", reason)}


def test_a_holder_that_is_gone_frees_its_partition_for_a_single_claimant() -> None:
    accepted, refused = assign_partitions(claims((5, 1)), bound={1: 9})
    assert [c.node_id for c in accepted] == [5] and refused == {}
