"""The server's reading of a node's start-up statement: a partition claim, or a node with its own data."""

from __future__ import annotations

from typing import Any

import pytest

from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.devices import DeviceProfile
from fedcore.core.reply_schema import SchemaError
from server_app.nodes import client_info

PROFILE = DeviceProfile("workstation").as_config()
NODE_RUN = RunConfig.from_flat({"data.name": "node", "data.labels": "no,yes"})


def test_a_node_with_its_own_data_is_known_by_its_node_id_and_weighted_by_its_examples() -> None:
    client = client_info(9_876_543_210, {wire.NODE_NUM_EXAMPLES: 42, **PROFILE}, NODE_RUN)
    assert (client.partition_id, client.num_examples) == (9_876_543_210, 42)
    assert client.profile == PROFILE


@pytest.mark.parametrize(
    ("cfg", "info", "cause"),
    [
        (NODE_RUN, PROFILE, r"missing \['num-examples'\]"),
        (RunConfig(), {wire.NODE_NUM_EXAMPLES: 42, **PROFILE}, r"missing \['partition-id'\]"),
        (RunConfig(), {wire.NODE_PARTITION_ID: 0, **PROFILE}, "missing num-partitions"),
        (RunConfig(), {wire.NODE_PARTITION_ID: 3, wire.NODE_NUM_PARTITIONS: 3, **PROFILE}, "partition-id=3"),
    ],
)
def test_a_statement_that_does_not_fit_the_runs_data_is_refused(
    cfg: RunConfig, info: dict[str, Any], cause: str
) -> None:
    with pytest.raises(SchemaError, match=cause):
        client_info(1, info, cfg)


def test_a_partition_claim_is_read_as_before() -> None:
    info = {wire.NODE_PARTITION_ID: 2, wire.NODE_NUM_PARTITIONS: 3, **PROFILE}
    client = client_info(5, info, RunConfig())
    assert (client.node_id, client.partition_id, client.num_examples) == (5, 2, 0)
