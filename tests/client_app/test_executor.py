"""The ClientApp called directly with real messages: personal layers (PTLS) and LEFF layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client_app.app import app as client_app
from client_app.executor import PERSONAL_STATE, cached_model
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.aggregate import ClientUpdate, aggregate_layerwise
from fedcore.core.devices import DeviceProfile
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.core.wire import arrays_to_state, config_to_dict, dict_to_config, state_to_arrays
from fedcore.methods.base import ClientInfo
from fedcore.methods.leff.planner import LeffPlanner
from fedcore.model import build_model, tunable_state
from tests.conftest import make_tiny_model_dir, tiny_run_config

NODE_ID = 7


def call_client(cfg: RunConfig, plan: LayerPlan, payload: dict, context: Context) -> RecordDict:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, NODE_ID, 1
    content = RecordDict(
        {
            wire.PLAN: dict_to_config(plan.to_dict()),
            wire.RUN_CONFIG: dict_to_config(cfg.to_flat()),
            wire.GLOBAL: state_to_arrays(payload),
        }
    )
    reply = client_app(Message(content, dst_node_id=NODE_ID, message_type=MessageType.TRAIN), context)
    assert not reply.has_error(), reply.error
    return reply.content


def node_context() -> Context:
    return Context(1, NODE_ID, {"partition-id": 0, "num-partitions": 2}, RecordDict(), {})


def test_personal_layers_stay_on_the_client_and_survive_rounds(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="fedavg")
    server_model, _ = build_model(cfg, num_labels=2)
    layer_map = LayerMap(server_model)
    global_state = tunable_state(server_model)
    context = node_context()
    all_groups = ("block.0", "block.1", "block.2", "block.3", "head")
    first = LayerPlan(round=1, rounds=2, train_groups=all_groups, personal_fraction=0.5, steps=2, lr=1e-2)
    reply = call_client(cfg, first, global_state, context)

    personal = config_to_dict(reply.config_records[wire.TRAIN_REPORT])[wire.REPORT_PERSONAL_GROUPS]
    assert len(personal) == 2 and all(g.startswith("block.") for g in personal)
    uploaded = {layer_map.group_of(n) for n in reply.array_records[wire.UPDATE]}
    assert uploaded == set(all_groups) - set(personal), "personal blocks must never be uploaded"
    stored = arrays_to_state(context.state.array_records[PERSONAL_STATE])
    assert {layer_map.group_of(n) for n in stored} == set(personal)

    # A hostile global model zeroes the personal blocks; the client keeps its own values.
    hostile = {
        n: torch.zeros_like(t) if layer_map.group_of(n) in personal else t for n, t in global_state.items()
    }
    second = dataclasses.replace(first, round=2, train_groups=("head",))
    call_client(cfg, second, hostile, context)
    model = cached_model(cfg, 2, 0).model
    params = dict(model.named_parameters())
    for name, value in arrays_to_state(context.state.array_records[PERSONAL_STATE]).items():
        assert torch.equal(value, stored[name])
        assert torch.equal(params[name].detach(), value)


@pytest.fixture(scope="module")
def deep_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("deep") / "bert8", "bert", layers=8)


def test_leff_client_holds_window_and_students_and_uploads_only_the_window(
    deep_bert: Path, tmp_path: Path
) -> None:
    cfg = tiny_run_config(
        deep_bert, tmp_path, method="leff", **{"leff.window": "round-robin", "leff.distill-steps": 2}
    )
    server_model, tokenizer = build_model(cfg, num_labels=2)
    layer_map = LayerMap(server_model)
    global_state = tunable_state(server_model)
    planner = LeffPlanner(cfg, server_model, tokenizer)
    client = ClientInfo(NODE_ID, 0, profile=DeviceProfile("edge", max_blocks=2).as_config())
    planned = planner.plan(2, [client], global_state)[NODE_ID]  # round-robin, client 0, round 2: window 2-3
    plan, payload = planned.plan, planned.payload
    assert plan.block_sources == (-1, 2, 3, -1, -1)  # students of ceil(2 * .5)=1 and ceil(4 * .5)=2 blocks
    assert not any("embeddings" in name for name in payload), "embeddings come from the client's disk"

    reply = call_client(cfg, plan, payload, node_context())

    model = cached_model(cfg, 2, len(plan.block_sources)).model
    client_map = LayerMap(model)
    assert client_map.num_blocks == 5
    per_block = sum(p.numel() for p in server_model.bert.encoder.layer[0].parameters())
    assert (
        sum(p.numel() for p in model.parameters())
        == sum(p.numel() for p in server_model.parameters()) - 3 * per_block
    )
    students = {n: t for n, t in payload.items() if client_map.block_index(n) in (0, 3, 4)}
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n].detach(), t) for n, t in students.items()), "students must stay frozen"

    update = arrays_to_state(reply.array_records[wire.UPDATE])
    assert {layer_map.group_of(n) for n in update} == {"block.2", "block.3", "head"}
    examples = int(reply.metric_records[wire.TRAIN_METRICS]["examples"])
    new_state = aggregate_layerwise(global_state, [ClientUpdate(NODE_ID, examples, update)])
    for name, before in global_state.items():
        changed = not torch.equal(new_state[name], before)
        assert changed == (name in update and bool(update[name].abs().sum() > 0)), name
        if layer_map.group_of(name) not in ("block.2", "block.3", "head"):
            assert new_state[name] is before


def test_float16_wire_halves_the_upload_and_keeps_the_update(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    plan = LayerPlan(round=1, rounds=1, train_groups=("block.1", "head"), steps=2, lr=1e-2)
    replies = {}
    for dtype in ("float32", "float16"):
        cfg = tiny_run_config(
            tiny_models["bert"], tmp_path / dtype, method="fedavg", **{"round.wire-dtype": dtype}
        )
        server_model, _ = build_model(cfg, num_labels=2)
        replies[dtype] = call_client(cfg, plan, tunable_state(server_model), node_context())
    full, half = (replies[w].array_records[wire.UPDATE] for w in ("float32", "float16"))
    assert half.count_bytes() < 0.55 * full.count_bytes()
    assert {a.dtype for a in half.values()} == {"float16"}
    # Same seed, same start: the half-precision update is the full one rounded.
    for name, delta in arrays_to_state(full).items():
        torch.testing.assert_close(arrays_to_state(half)[name], delta.half().float(), rtol=0, atol=0)


def test_float16_wire_refuses_values_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="huge.*float16"):
        state_to_arrays({"huge": torch.tensor([1e6])}, "float16")
