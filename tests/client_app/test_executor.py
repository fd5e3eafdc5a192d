"""The ClientApp called directly with real messages: personal layers (PTLS) and LEFF layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from client_app.app import app as client_app
from client_app.executor import cached_model
from client_app.personal_store import NODE_PERSONAL_DIR, PersonalStore
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.aggregate import ClientUpdate, aggregate_layerwise
from fedcore.core.devices import DeviceProfile
from fedcore.core.layers import LayerMap
from fedcore.core.plan import LayerPlan
from fedcore.core.tensor_files import CorruptTensorFile
from fedcore.core.wire import config_to_dict, dict_to_config, received_state, state_to_arrays
from fedcore.data import tables
from fedcore.data.splits import client_splits
from fedcore.methods.base import ClientInfo, client_settings
from fedcore.methods.leff.planner import LeffPlanner
from fedcore.model import build_model, tunable_state
from tests.conftest import make_tiny_model_dir, tiny_run_config

NODE_ID = 7
RUN_NAME = "20250101-000000-droppeft"


def call_client(
    cfg: RunConfig, plan: LayerPlan, payload: dict, context: Context, *, settings_of_run: bool = True
) -> RecordDict:
    """The client's reply to ``plan``; with ``settings_of_run`` the plan carries the run's training
    settings, as the server's planners send it."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, NODE_ID, 1
    if settings_of_run:
        plan = dataclasses.replace(plan, **client_settings(cfg))
    content = RecordDict(
        {
            wire.PLAN: dict_to_config(plan.to_dict()),
            wire.RUN_CONFIG: dict_to_config(cfg.to_flat()),
            wire.RUN: dict_to_config({wire.RUN_NAME: RUN_NAME}),
            wire.GLOBAL: state_to_arrays(payload),
        }
    )
    reply = client_app(Message(content, dst_node_id=NODE_ID, message_type=MessageType.TRAIN), context)
    assert not reply.has_error(), reply.error
    return reply.content


def node_context(personal_dir: Path) -> Context:
    """A fresh SuperNode process: nothing in memory, its personal layers under ``personal_dir``."""
    node_config = {"partition-id": 0, "num-partitions": 2, NODE_PERSONAL_DIR: str(personal_dir)}
    return Context(1, NODE_ID, node_config, RecordDict(), {})


def stored_personal(context: Context, round_number: int) -> dict[str, torch.Tensor]:
    store = PersonalStore.for_node(dict(context.node_config), RUN_NAME, "partition-0")
    return store.before(round_number + 1)


def test_personal_layers_stay_on_the_client_and_survive_rounds(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="fedavg")
    server_model, _ = build_model(cfg, num_labels=2)
    layer_map = LayerMap(server_model)
    global_state = tunable_state(server_model)
    context = node_context(tmp_path / "personal")
    all_groups = ("block.0", "block.1", "block.2", "block.3", "head")
    first = LayerPlan(round=1, rounds=2, train_groups=all_groups, personal_fraction=0.5, steps=2, lr=1e-2)
    reply = call_client(cfg, first, global_state, context)

    personal = config_to_dict(reply.config_records[wire.TRAIN_REPORT])[wire.REPORT_PERSONAL_GROUPS]
    assert len(personal) == 2 and all(g.startswith("block.") for g in personal)
    uploaded = {layer_map.group_of(n) for n in reply.array_records[wire.UPDATE]}
    assert uploaded == set(all_groups) - set(personal), "personal blocks must never be uploaded"
    stored = stored_personal(context, 1)
    assert {layer_map.group_of(n) for n in stored} == set(personal)
    assert len(context.state) == 0, "nothing is held in the node's memory between rounds"

    # A hostile global model zeroes the personal blocks; the client, restarted in between (a fresh
    # context: nothing carried in memory), keeps its own values from its disk.
    hostile = {
        n: torch.zeros_like(t) if layer_map.group_of(n) in personal else t for n, t in global_state.items()
    }
    second = dataclasses.replace(first, round=2, train_groups=("head",))
    restarted = node_context(tmp_path / "personal")
    call_client(cfg, second, hostile, restarted)
    model = cached_model(cfg, 2, 0).model
    params = dict(model.named_parameters())
    for name, value in stored_personal(restarted, 2).items():
        assert torch.equal(value, stored[name])
        assert torch.equal(params[name].detach(), value)


def test_a_corrupt_personal_layer_file_fails_the_round_naming_the_file(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="fedavg")
    global_state = tunable_state(build_model(cfg, num_labels=2)[0])
    context = node_context(tmp_path / "personal")
    plan = LayerPlan(round=1, rounds=2, train_groups=("block.0", "block.1"), personal_fraction=0.5, steps=1)
    call_client(cfg, plan, global_state, context)
    (saved,) = (tmp_path / "personal" / RUN_NAME / "partition-0").iterdir()
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0x10
    saved.write_bytes(bytes(data))
    content = RecordDict(
        {
            wire.PLAN: dict_to_config(dataclasses.replace(plan, round=2).to_dict()),
            wire.RUN_CONFIG: dict_to_config(cfg.to_flat()),
            wire.RUN: dict_to_config({wire.RUN_NAME: RUN_NAME}),
            wire.GLOBAL: state_to_arrays(global_state),
        }
    )
    with pytest.raises(CorruptTensorFile, match="values do not match") as error:
        client_app(Message(content, dst_node_id=NODE_ID, message_type=MessageType.TRAIN), context)
    assert str(saved) in str(error.value), "the round fails (recorded by the server) naming the file"


def test_a_repeated_round_starts_from_the_layers_before_it(tmp_path: Path) -> None:
    """A server resumed from an older checkpoint repeats rounds: their newer files must not be used."""
    store = PersonalStore.for_node({NODE_PERSONAL_DIR: str(tmp_path)}, RUN_NAME, "partition-3")
    for round_number in (1, 2, 3):
        store.save(round_number, {"w": torch.full((2,), float(round_number))})
    assert torch.equal(store.before(3)["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in store.folder.iterdir()) == ["round-2.safetensors"]
    assert store.before(1) == {}
    with pytest.raises(ValueError, match="not a plain directory name"):
        PersonalStore.for_node({NODE_PERSONAL_DIR: str(tmp_path)}, "../elsewhere", "partition-3")


@pytest.fixture(scope="module")
def deep_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("deep") / "bert8", "bert", layers=8)


def plan_window_2_3(cfg: RunConfig) -> tuple[nn.Module, dict, LeffPlanner, LayerPlan, dict]:
    """The server's model, its state, the planner, and the round-2 plan + payload of a client that can
    train two blocks (round-robin windows: client 0 trains blocks 2-3 in round 2)."""
    server_model, tokenizer = build_model(cfg, num_labels=2)
    global_state = tunable_state(server_model)
    planner = LeffPlanner(cfg, server_model, tokenizer)
    client = ClientInfo(NODE_ID, 0, profile=DeviceProfile("edge", max_blocks=2).as_config())
    planned = planner.plan(2, [client], global_state)[NODE_ID]
    return server_model, global_state, planner, planned.plan, planned.payload


def test_leff_client_holds_window_and_students_and_uploads_only_the_window(
    deep_bert: Path, tmp_path: Path
) -> None:
    cfg = tiny_run_config(
        deep_bert,
        tmp_path,
        method="leff",
        **{"leff.window": "round-robin", "leff.stand-in": "students", "leff.distill-steps": 2},
    )
    server_model, global_state, planner, plan, payload = plan_window_2_3(cfg)
    layer_map = LayerMap(server_model)
    assert plan.block_sources == (-1, 2, 3, -1, -1)  # students of ceil(2 * .5)=1 and ceil(4 * .5)=2 blocks
    assert not any("embeddings" in name for name in payload), "embeddings come from the client's disk"

    reply = call_client(cfg, plan, payload, node_context(tmp_path / "personal"))

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

    update = received_state(reply.array_records[wire.UPDATE])
    assert {layer_map.group_of(n) for n in update} == {"block.2", "block.3", "head"}
    examples = int(reply.metric_records[wire.TRAIN_METRICS]["examples"])
    new_state = aggregate_layerwise(global_state, [ClientUpdate(NODE_ID, examples, update)])
    for name, before in global_state.items():
        changed = not torch.equal(new_state[name], before)
        assert changed == (name in update and bool(update[name].abs().sum() > 0)), name
        if layer_map.group_of(name) not in ("block.2", "block.3", "head"):
            assert new_state[name] is before


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_leff_bfloat16_stand_in_holds_every_block_and_uploads_only_the_window(
    tmp_path: Path, arch: str
) -> None:
    model_dir = make_tiny_model_dir(tmp_path / arch, arch, layers=5)
    overrides = {"leff.window": "round-robin", "leff.stand-in": "bfloat16", "leff.distill-steps": 2}
    cfg = tiny_run_config(model_dir, tmp_path, method="leff", **overrides)
    server_model, _, planner, plan, payload = plan_window_2_3(cfg)
    layer_map = LayerMap(server_model)
    assert plan.block_sources == (0, 1, 2, 3, 4)
    assert plan.frozen_dtype == "bfloat16"
    assert planner.state_dict()["distill_seconds"] == 0.0, "nothing is distilled"
    window = {"block.2", "block.3", "head"}
    for name, tensor in payload.items():
        assert tensor.dtype == (torch.float32 if layer_map.group_of(name) in window else torch.float16), name

    reply = call_client(cfg, plan, payload, node_context(tmp_path / "personal"))

    model = cached_model(cfg, 2, len(plan.block_sources), plan.frozen_dtype).model
    params = dict(model.named_parameters())
    assert len(params) == len(dict(server_model.named_parameters()))
    for name, tensor in payload.items():
        if layer_map.group_of(name) not in window:  # frozen: the server's values, rounded, untouched
            held = (
                torch.bfloat16
                if isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.Linear)
                else torch.float32
            )
            assert params[name].dtype == held, name
            assert torch.equal(params[name].detach(), tensor.to(held)), name
    embeddings = [n for n in params if layer_map.group_of(n) == "embed"]
    assert embeddings and all(params[n].dtype == torch.float32 for n in embeddings)
    update = received_state(reply.array_records[wire.UPDATE])
    assert {layer_map.group_of(n) for n in update} == window
    assert {t.dtype for t in update.values()} == {torch.float32}
    assert all(update[n].abs().sum() > 0 for n in update if n.endswith("weight") and "norm" not in n)


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
        replies[dtype] = call_client(cfg, plan, tunable_state(server_model), node_context(tmp_path / dtype))
    full, half = (replies[w].array_records[wire.UPDATE] for w in ("float32", "float16"))
    assert half.count_bytes() < 0.55 * full.count_bytes()
    assert {a.dtype for a in half.values()} == {"float16"}
    # Same seed, same start: the half-precision update is the full one rounded.
    for name, delta in received_state(full).items():
        torch.testing.assert_close(received_state(half)[name].float(), delta.half().float(), rtol=0, atol=0)


def test_a_float16_tensor_travels_as_it_is_on_a_float32_wire() -> None:
    state = {"frozen": torch.tensor([1.5, -2.25]).half(), "window": torch.tensor([1.0, 1 / 3])}
    received = received_state(state_to_arrays(state, "float32"))
    assert received["frozen"].dtype == torch.float16 and torch.equal(received["frozen"], state["frozen"])
    assert received["window"].dtype == torch.float32 and torch.equal(received["window"], state["window"])


def test_float16_wire_refuses_values_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="huge.*float16"):
        state_to_arrays({"huge": torch.tensor([1e6])}, "float16")


def test_the_probe_is_held_out_of_training_and_of_the_local_test_rows(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """DropPEFT's reward is measured on training-split rows the round does not train on."""
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="fedlora")
    model, _ = build_model(cfg, num_labels=2)
    context = node_context(tmp_path / "personal")
    splits = client_splits(cfg.data, cfg.model.task, cfg.seed, 0, 2)
    groups = tuple(LayerMap(model).all_groups())
    plain = LayerPlan(round=1, rounds=1, train_groups=groups, steps=2, lr=1e-2)
    metrics = config_to_dict(
        call_client(cfg, plain, tunable_state(model), context).metric_records[wire.TRAIN_METRICS]
    )
    assert metrics[wire.EXAMPLES] == len(splits.train) and wire.PROBE_LOSS_BEFORE not in metrics

    probed = dataclasses.replace(plain, probe_examples=8)
    reply = call_client(cfg, probed, tunable_state(model), context)
    metrics = config_to_dict(reply.metric_records[wire.TRAIN_METRICS])
    assert metrics[wire.EXAMPLES] == len(splits.train) - 8, "the probe rows are not trained on"
    assert metrics[wire.PROBE_LOSS_AFTER] != metrics[wire.PROBE_LOSS_BEFORE], (
        "the probe sees the round's update"
    )
    probe = tables.probe_split(splits.train, 8)[1]
    assert len(splits.test) and not set(probe["text"]) & set(splits.test["text"])


def test_the_client_trains_and_replies_as_its_plan_says_not_as_the_run_config_does(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="fedlora")  # batch size 8, float32 replies
    global_state = tunable_state(build_model(cfg, num_labels=2)[0])
    plan = LayerPlan(
        round=1,
        rounds=1,
        train_groups=("head",),
        steps=3,
        batch_size=5,
        wire_dtype="float16",
        precision="fp32",
    )
    reply = call_client(cfg, plan, global_state, node_context(tmp_path / "personal"), settings_of_run=False)
    assert reply.metric_records[wire.TRAIN_METRICS][wire.SAMPLES_PROCESSED] == 3 * 5
    update = received_state(reply.array_records[wire.UPDATE])
    assert update and all(t.dtype == torch.float16 for t in update.values())
