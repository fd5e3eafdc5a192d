"""The start-up info query answers from a fresh process without the training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedcore.config import RunConfig
from fedcore.data.sources import node_partition

ROOT = Path(__file__).resolve().parents[2]

#: a fresh interpreter, like the flwr-clientapp process a SuperNode starts per message
_ANSWER_INFO_QUERY = """
import json, sys
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client_app.app import app
from fedcore.config import RunConfig
from fedcore.data.sources import node_partition
from fedcore.core import wire
from fedcore.core.wire import config_to_dict, dict_to_config

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
content = RecordDict({wire.RUN_CONFIG: dict_to_config(RunConfig().to_flat())})
query = Message(content, dst_node_id=7, message_type=f"{MessageType.QUERY}.{wire.INFO_QUERY}")
node_config = {"partition-id": 2, "num-partitions": 3, "device": "jetson-orin", "personal-dir": "/srv/p"}
reply = app(query, Context(1, 7, node_config, RecordDict(), {}))
assert not reply.has_error(), reply.error
heavy = [name for name in ("torch", "transformers", "peft", "datasets") if name in sys.modules]
print(json.dumps({"info": config_to_dict(reply.content.config_records[wire.NODE_INFO]), "heavy": heavy}))
"""


def test_info_query_imports_no_torch_transformers_peft_or_datasets() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _ANSWER_INFO_QUERY], cwd=ROOT, capture_output=True, text=True, check=True
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    assert answer["info"]["partition-id"] == 2 and answer["info"]["device-name"] == "jetson-orin"
    assert "personal-dir" not in answer["info"], "the reply states what plans need, not the node config"


def test_a_partition_id_outside_the_federation_is_refused_at_start_up() -> None:
    cfg = RunConfig()
    assert node_partition(cfg, {"partition-id": 2, "num-partitions": 3}) == (2, 3)
    with pytest.raises(ValueError, match=r"partition-id=3 is outside 0\.\.2"):
        node_partition(cfg, {"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ValueError, match="node config lacks 'num-partitions'"):
        node_partition(cfg, {"partition-id": 0})
