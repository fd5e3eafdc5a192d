"""Which node trains which partition (a claim is bound to the node that held it in this run), and how
much its weight can claim."""

from __future__ import annotations

from typing import Any

import pytest

from fedcore.core import wire
from fedcore.core.devices import DeviceProfile
from fedcore.core.reply_schema import SchemaError
from fedcore.methods.base import ClientInfo
from server_app.nodes import assign_partitions, client_info


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


def test_the_server_counts_a_shared_partition_itself_and_refuses_a_contradicting_statement() -> None:
    stated = {"partition-id": 1, "num-partitions": 4, "device-name": "cpu-box", "device-speed": 0.5}
    stated |= {"device-memory-mb": 8000.0, "device-capacity": 0.5, "device-max-blocks": 0}
    sizes = {(1, 4): 250}
    client = client_info(7, stated, 0, lambda p, n: sizes[p, n])
    assert (client.num_examples, client.examples_checked) == (250, True)
    with pytest.raises(SchemaError, match="num-examples=9999999, but partition-id 1 of 4 has 250"):
        client_info(7, {**stated, "num-examples": 9_999_999}, 0, lambda p, n: sizes[p, n])
    unchecked = client_info(7, {**stated, "num-examples": 300}, 0)
    assert (unchecked.num_examples, unchecked.examples_checked) == (300, False)


PROFILE = DeviceProfile("workstation").as_config()


def test_a_node_with_its_own_data_is_known_by_its_node_id_and_weighted_by_its_statement() -> None:
    client = client_info(9_876_543_210, {wire.NODE_NUM_EXAMPLES: 42, **PROFILE}, 0, node_data=True)
    assert (client.partition_id, client.num_examples, client.examples_checked) == (9_876_543_210, 42, False)
    assert client.profile == PROFILE


@pytest.mark.parametrize(
    ("info", "node_data", "cause"),
    [
        (PROFILE, True, r"missing \['num-examples'\]"),
        ({wire.NODE_NUM_EXAMPLES: 42, **PROFILE}, False, r"missing \['partition-id'\]"),
        ({wire.NODE_PARTITION_ID: 0, **PROFILE}, False, "missing num-partitions"),
    ],
)
def test_a_statement_that_does_not_fit_the_runs_data_is_refused(
    info: dict[str, Any], node_data: bool, cause: str
) -> None:
    with pytest.raises(SchemaError, match=cause):
        client_info(1, info, 0, node_data=node_data)
