"""A node with its own data file: its start-up statement and a training round, through the ClientApp."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict

from client_app.app import app as client_app
from client_app.info import node_info
from client_app.personal_store import NODE_PERSONAL_DIR
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.core.wire import config_to_dict, dict_to_config, received_state, state_to_arrays
from fedcore.data.tables import DataError
from fedcore.model import build_model, tunable_state
from tests.client_app.test_executor import NODE_ID, RUN_NAME, call_client
from tests.conftest import tiny_run_config

#: 40 rows in the node owner's own column names; 20% are kept for the node's local test
ROWS = [
    {"comment": "good fun film" if i % 2 else "dull boring plot", "verdict": "fresh" if i % 2 else "rotten"}
    for i in range(40)
]


def node_data_run(model_dir: Path, output_dir: Path) -> RunConfig:
    overrides = {
        "data.name": "node",
        "data.text-column": "comment",
        "data.label-column": "verdict",
        "data.labels": "rotten,fresh",
    }
    return tiny_run_config(model_dir, output_dir, method="fedavg", **overrides)


@pytest.fixture
def own_file(tmp_path: Path) -> Path:
    path = tmp_path / "node-a" / "reviews.csv"
    path.parent.mkdir()
    pd.DataFrame(ROWS).to_csv(path, index=False)
    return path


def test_a_node_states_its_example_count_and_nothing_about_where_its_data_is(
    tiny_models: dict[str, Path], tmp_path: Path, own_file: Path
) -> None:
    cfg = node_data_run(tiny_models["bert"], tmp_path)
    info = config_to_dict(node_info({"data-path": str(own_file)}, cfg)[wire.NODE_INFO])
    assert info[wire.NODE_NUM_EXAMPLES] == 32
    assert wire.NODE_PARTITION_ID not in info and info["device-name"] == "workstation"
    assert not any(str(own_file.parent) in str(value) for value in info.values())


def test_a_node_trains_on_its_own_file_and_evaluates_on_its_own_held_out_rows(
    tiny_models: dict[str, Path], tmp_path: Path, own_file: Path
) -> None:
    cfg = node_data_run(tiny_models["bert"], tmp_path)
    global_state = tunable_state(build_model(cfg, num_labels=2)[0])
    node_config = {"data-path": str(own_file), NODE_PERSONAL_DIR: str(tmp_path / "personal")}
    groups = ("block.0", "block.1", "block.2", "block.3", "head")
    plan = LayerPlan(
        round=1, rounds=1, train_groups=groups, steps=3, lr=1e-2, personal_fraction=0.25, evaluate_local=True
    )
    reply = call_client(cfg, plan, global_state, Context(1, NODE_ID, node_config, RecordDict(), {}))

    metrics = dict(reply.metric_records[wire.TRAIN_METRICS])
    assert metrics[wire.EXAMPLES] == 32, "trained on the node's file, less its 8 local test rows"
    assert 0.0 <= metrics[wire.PERSONAL_ACCURACY] <= 1.0
    update = received_state(reply.array_records[wire.UPDATE])
    assert update and any(bool(torch.any(delta != 0)) for delta in update.values())
    layer_map = LayerMap(build_model(cfg, num_labels=2)[0])
    assert {layer_map.group_of(name) for name in update} <= set(groups)
    assert (tmp_path / "personal" / RUN_NAME / "node-data").is_dir(), "personal layers kept by the node"


def test_a_node_whose_rows_carry_another_label_fails_its_round_naming_the_label(
    tiny_models: dict[str, Path], tmp_path: Path, own_file: Path
) -> None:
    pd.DataFrame([*ROWS, {"comment": "so so", "verdict": "mixed"}]).to_csv(own_file, index=False)
    cfg = node_data_run(tiny_models["bert"], tmp_path)
    global_state = tunable_state(build_model(cfg, num_labels=2)[0])
    plan = LayerPlan(round=1, rounds=1, train_groups=("head",), steps=1)
    context = Context(1, NODE_ID, {"data-path": str(own_file)}, RecordDict(), {})
    with pytest.raises(DataError, match=r"\['mixed'\] outside the run's label set \['rotten', 'fresh'\]"):
        call_client(cfg, plan, global_state, context)


@pytest.mark.parametrize(
    ("simulated", "device", "slowdown"), [(True, "jetson-orin", 4.0), (False, "measured", 1.0)]
)
def test_device_time_is_emulated_in_simulation_and_real_in_deployment(
    tiny_models: dict[str, Path],
    tmp_path: Path,
    own_file: Path,
    simulated: bool,
    device: str,
    slowdown: float,
) -> None:
    """A quarter-speed node: simulation scales its compute time by 4, a deployed node reports it as it is."""
    cfg = node_data_run(tiny_models["bert"], tmp_path)
    global_state = tunable_state(build_model(cfg, num_labels=2)[0])
    plan = LayerPlan(round=1, rounds=1, train_groups=("head",), steps=1)
    content = RecordDict(
        {
            wire.PLAN: dict_to_config(plan.to_dict()),
            wire.RUN_CONFIG: dict_to_config(cfg.to_flat()),
            wire.RUN: dict_to_config({wire.RUN_NAME: RUN_NAME, wire.SIMULATED: simulated}),
            wire.GLOBAL: state_to_arrays(global_state),
        }
    )
    node_config = {"data-path": str(own_file), "speed": 0.25, **({"device": device} if simulated else {})}
    reply = client_app(
        Message(content, dst_node_id=NODE_ID, message_type=MessageType.TRAIN),
        Context(1, NODE_ID, node_config, RecordDict(), {}),
    )
    metrics = dict(reply.content.metric_records[wire.TRAIN_METRICS])
    assert metrics[wire.DEVICE_TIME_S] == pytest.approx(metrics[wire.COMPUTE_TIME_S] * slowdown)
    assert config_to_dict(reply.content.config_records[wire.TRAIN_REPORT])[wire.REPORT_DEVICE] == device
