"""Each planner on its own: what a round's plans and payloads hold, and that no round leaks into the next."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedcore.core import wire
from fedcore.core.devices import PROFILES, DeviceProfile, speed_matched_steps
from fedcore.core.layers import HEAD, LayerMap
from fedcore.methods.base import ClientInfo, ClientResult, tunable_groups
from fedcore.methods.baselines import AllLayersPlanner
from fedcore.methods.droppeft.planner import BanditDrop, DropPeftPlanner
from fedcore.methods.leff import planner as leff_planner
from fedcore.methods.leff.planner import LeffPlanner
from fedcore.methods.registry import make_planner
from fedcore.model import build_model, tunable_state
from tests.conftest import make_tiny_model_dir, tiny_run_config

CLIENTS = [ClientInfo(node_id=10 + p, partition_id=p) for p in range(3)]


def _planner_and_state(model_dir: Path, tmp_path: Path, **overrides: object) -> tuple:
    cfg = tiny_run_config(model_dir, tmp_path, **overrides)
    model, tokenizer = build_model(cfg, num_labels=2)
    return make_planner(cfg, model, tokenizer), model, tunable_state(model)


@pytest.mark.parametrize("method", ["fedavg", "fedlora", "fedbitfit"])
def test_baselines_send_every_tunable_group_to_every_client(
    tiny_models: dict[str, Path], tmp_path: Path, method: str
) -> None:
    planner, model, state = _planner_and_state(tiny_models["bert"], tmp_path, method=method)
    assert type(planner) is AllLayersPlanner
    planned = planner.plan(1, CLIENTS, state)
    assert set(planned) == {c.node_id for c in CLIENTS}
    groups = tuple(tunable_groups(model))
    assert HEAD in groups and "embed" not in groups
    for client_plan in planned.values():
        assert client_plan.plan.train_groups == groups
        assert client_plan.plan.drop_rates == () and client_plan.plan.personal_fraction == 0
        assert client_plan.payload is state
    assert len({p.plan.seed for p in planned.values()}) == len(CLIENTS), "one seed per client"
    assert planner.state_dict() == {}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"eval.local": False}, False),
        ({"eval.local": True}, True),
        ({"data.name": "node", "data.labels": "no,yes"}, True),  # the nodes' own rows are the test data
    ],
)
def test_local_evaluation_is_asked_of_every_method_when_configured(
    tiny_models: dict[str, Path], tmp_path: Path, overrides: dict[str, object], expected: bool
) -> None:
    planner, _, state = _planner_and_state(tiny_models["bert"], tmp_path, method="fedlora", **overrides)
    plan = planner.plan(1, CLIENTS[:1], state)[CLIENTS[0].node_id].plan
    assert plan.evaluate_local is expected and plan.personal_fraction == 0


def test_fixed_dropout_and_personal_layers_enter_any_plan(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    overrides = {"method": "fedavg", "drop.mode": "fixed", "drop.mean-rate": 0.3, "ptls.fraction": 0.5}
    planner, model, state = _planner_and_state(tiny_models["bert"], tmp_path, **overrides)
    plan = planner.plan(1, CLIENTS[:1], state)[CLIENTS[0].node_id].plan
    assert len(plan.drop_rates) == LayerMap(model).num_blocks
    assert sum(plan.drop_rates) / len(plan.drop_rates) == pytest.approx(0.3)
    assert plan.personal_fraction == 0.5 and plan.evaluate_local


@pytest.mark.parametrize("method", ["fedlora", "droppeft"])
def test_sensitivity_shape_reads_the_starting_model(
    tiny_models: dict[str, Path], tmp_path: Path, method: str
) -> None:
    """drop.shape(s)=sensitivity: the planner measures block sensitivity once and spreads the rate by it."""
    overrides = (
        {"drop.mode": "fixed", "drop.mean-rate": 0.3, "drop.shape": "sensitivity"}
        if method == "fedlora"
        else {"droppeft.rates": "0.3", "droppeft.shapes": "sensitivity"}
    )
    planner, model, state = _planner_and_state(tiny_models["llama"], tmp_path, method=method, **overrides)
    scores = planner.sensitivity
    assert scores is not None and len(scores) == LayerMap(model).num_blocks and min(scores) > 0
    plan = planner.plan(1, CLIENTS[:1], state)[CLIENTS[0].node_id].plan
    assert sum(plan.drop_rates) / len(plan.drop_rates) == pytest.approx(0.3)
    most = max(range(len(scores)), key=scores.__getitem__)
    least = min(range(len(scores)), key=scores.__getitem__)
    assert plan.drop_rates[most] < plan.drop_rates[least]
    assert planner.state_dict()["block_sensitivity"] == scores
    other_shape = {"droppeft.shapes": "uniform,incremental"} if method == "droppeft" else {}
    plain, _, _ = _planner_and_state(tiny_models["llama"], tmp_path, method=method, **other_shape)
    assert plain.sensitivity is None  # measured only when a shape reads it


def test_droppeft_plans_bandit_arms_and_learns_only_from_the_round(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    paper = {"droppeft.rates": "0.15,0.3"}
    planner, _, state = _planner_and_state(tiny_models["bert"], tmp_path, method="droppeft", **paper)
    assert type(planner) is DropPeftPlanner and isinstance(planner.drop_policy, BanditDrop)
    assert planner.drop_policy.bandit.prune
    planned = planner.plan(1, CLIENTS, state)
    for client_plan in planned.values():
        assert client_plan.plan.drop_rates and client_plan.plan.probe_examples > 0
        assert client_plan.payload is state
    metrics = {wire.PROBE_LOSS_BEFORE: 0.7, wire.PROBE_LOSS_AFTER: 0.5, wire.DEVICE_TIME_S: 2.0}
    planner.observe(1, [ClientResult(0, True, metrics), ClientResult(1, False, {})])
    assert planner.drop_policy.rewards == {"client-0": pytest.approx(math.log(0.7 / 0.5) / 2.0)}

    planner.plan(2, CLIENTS[2:], state)  # clients.per-round: only client 2 this round
    assert list(planner.state_dict()["choices"]) == ["client-2"]
    restored, _, _ = _planner_and_state(tiny_models["bert"], tmp_path, method="droppeft", **paper)
    restored.load_state_dict(planner.state_dict())
    assert restored.state_dict() == planner.state_dict()


def test_droppeft_with_one_arm_runs_it_without_the_probe(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A single arm (the default) leaves the bandit nothing to learn, so no client pays for the probe."""
    planner, _, state = _planner_and_state(tiny_models["bert"], tmp_path, method="droppeft")
    plan = planner.plan(1, CLIENTS[:1], state)[CLIENTS[0].node_id].plan
    assert plan.probe_examples == 0 and plan.label == "p0.15-incremental"
    assert sum(plan.drop_rates) / len(plan.drop_rates) == pytest.approx(0.15)
    metrics = {wire.PROBE_LOSS_BEFORE: 0.7, wire.PROBE_LOSS_AFTER: 0.5, wire.DEVICE_TIME_S: 2.0}
    planner.observe(1, [ClientResult(0, True, metrics)])
    assert planner.drop_policy.rewards == {}


@pytest.mark.parametrize("method", ["droppeft", "fedlora"])
def test_target_speed_gives_only_slow_devices_their_speed_matched_rate(
    tiny_models: dict[str, Path], tmp_path: Path, method: str
) -> None:
    """drop.target-speed=0.5: a quarter-speed device drops half its blocks on average, a half-speed one
    keeps its configuration (full depth here), a faster one too; the slow device's plan says what it runs.
    DropPEFT's one arm and FedLoRA's fixed dropout both sit at rate 0."""
    dropout = (
        {"droppeft.rates": "0", "droppeft.shapes": "uniform"}
        if method == "droppeft"
        else {"drop.mode": "fixed", "drop.mean-rate": 0.0, "drop.shape": "uniform"}
    )
    planner, model, state = _planner_and_state(
        tiny_models["bert"], tmp_path, method=method, **{"drop.target-speed": 0.5, **dropout}
    )
    devices = {0: "workstation", 1: "cpu-box", 2: "jetson-orin"}
    clients = [
        ClientInfo(node_id=10 + p, partition_id=p, profile=PROFILES[name].as_config())
        for p, name in devices.items()
    ]
    planned = planner.plan(1, clients, state)
    by_device = {devices[c.partition_id]: planned[c.node_id].plan for c in clients}
    assert by_device["workstation"].drop_rates == () and by_device["cpu-box"].drop_rates == ()
    slow = by_device["jetson-orin"]
    assert len(slow.drop_rates) == LayerMap(model).num_blocks
    assert sum(slow.drop_rates) / len(slow.drop_rates) == pytest.approx(0.5)
    assert slow.label == "p0.50-uniform" and slow.probe_examples == 0
    unmatched, _, _ = _planner_and_state(tiny_models["bert"], tmp_path, method=method, **dropout)
    assert all(p.plan.drop_rates == () for p in unmatched.plan(1, clients, state).values())
    assert all(HEAD in p.train_groups for p in by_device.values())
    # without layer dropout (FedLoRA's own default) the target changes nothing
    plain, _, _ = _planner_and_state(tiny_models["bert"], tmp_path, **{"drop.target-speed": 0.5})
    assert all(p.plan.drop_rates == () for p in plain.plan(1, clients, state).values())


@pytest.mark.parametrize("method", ["fedlora", "droppeft", "leff"])
def test_train_target_speed_gives_only_slow_devices_fewer_steps(
    tiny_models: dict[str, Path], tmp_path: Path, method: str
) -> None:
    """train.target-speed=0.5 with 5 local steps: the quarter-speed device runs 2 (its training then
    takes no longer than a half-speed device's 5), the half-speed and full-speed devices 5, a client that
    stated no profile (LEFF needs every client's) 5 too; what each step trains is left as it was."""
    planner, _, state = _planner_and_state(
        tiny_models["bert"], tmp_path, method=method, **{"train.target-speed": 0.5, "train.local-steps": 5}
    )
    devices = {0: "workstation", 1: "cpu-box", 2: "jetson-orin"}
    clients = [
        ClientInfo(node_id=10 + p, partition_id=p, profile=PROFILES[name].as_config())
        for p, name in devices.items()
    ]
    if method != "leff":
        clients.append(ClientInfo(node_id=13, partition_id=3))
    planned = planner.plan(1, clients, state)
    steps = {c.partition_id: planned[c.node_id].plan.steps for c in clients}
    expected = {0: 5, 1: 5, 2: 2} if method == "leff" else {0: 5, 1: 5, 2: 2, 3: 5}
    assert steps == expected
    unmatched, _, _ = _planner_and_state(
        tiny_models["bert"], tmp_path, method=method, **{"train.local-steps": 5}
    )
    plain = unmatched.plan(1, clients, state)
    for client in clients:
        matched, reference = planned[client.node_id].plan, plain[client.node_id].plan
        assert matched.drop_rates == reference.drop_rates
        assert matched.train_groups == reference.train_groups


@pytest.mark.parametrize(
    ("steps", "speed", "target", "expected"),
    [
        (5, 0.25, 0.5, 2),
        (5, 0.5, 0.5, 5),
        (5, 1.0, 0.5, 5),
        (20, 0.25, 1.0, 5),
        (3, 0.1, 1.0, 1),
        (5, 0.25, 0.0, 5),
        (4, 0.6, 0.8, 3),
    ],
)
def test_speed_matched_steps(steps: int, speed: float, target: float, expected: int) -> None:
    assert speed_matched_steps(steps, speed, target) == expected


def test_droppeft_does_not_prune_arms_of_drifting_devices(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    planner, _, _ = _planner_and_state(
        tiny_models["bert"], tmp_path, method="droppeft", **{"droppeft.discount": 0.9}
    )
    assert not planner.drop_policy.bandit.prune


def test_leff_plans_carry_their_payload_and_log_only_the_round(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "bert6", "bert", layers=6)
    overrides = {
        "leff.window": "round-robin",
        "leff.stand-in": "students",
        "leff.distill-steps": 1,
        "proxy.examples": 16,
    }
    planner, model, state = _planner_and_state(model_dir, tmp_path, method="leff", **overrides)
    assert type(planner) is LeffPlanner
    profile = DeviceProfile("edge", max_blocks=2).as_config()
    clients = [ClientInfo(node_id=10 + p, partition_id=p, profile=profile) for p in range(2)]

    planned = planner.plan(1, clients, state)
    layer_map = LayerMap(model)
    for client_plan in planned.values():
        sources = client_plan.plan.block_sources
        window = [s for s in sources if s >= 0]
        assert len(window) == 2 and client_plan.plan.train_groups == (*(f"block.{s}" for s in window), HEAD)
        payload_blocks = {layer_map.block_index(n) for n in client_plan.payload} - {None}
        assert payload_blocks == set(range(len(sources))), "window and students, under local names"
        assert not any(layer_map.group_of(n) == "embed" for n in client_plan.payload)
        local = sources.index(window[0])
        name = next(n for n in client_plan.payload if layer_map.block_index(n) == local)
        torch.testing.assert_close(
            client_plan.payload[name], state[layer_map.with_block_index(name, window[0])], rtol=0, atol=0
        )
    assert set(planner.state_dict()["windows"]) == {"client-0", "client-1"}

    planner.plan(2, clients[1:], state)  # clients.per-round: client 0 is not picked this round
    assert set(planner.state_dict()["windows"]) == {"client-1"}


@pytest.mark.parametrize(
    ("window", "scored"), [("random", False), ("round-robin", False), ("importance", True)]
)
def test_leff_scores_block_importance_only_for_policies_that_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: str, scored: bool
) -> None:
    """Random and round-robin windows never read importance: the server skips its pass every round."""
    model_dir = make_tiny_model_dir(tmp_path / "bert6", "bert", layers=6)
    overrides = {"leff.window": window, "leff.stand-in": "bfloat16", "proxy.examples": 16}
    planner, _, state = _planner_and_state(model_dir, tmp_path, method="leff", **overrides)
    passes = []
    monkeypatch.setattr(
        leff_planner, "block_importance", lambda *args: passes.append(1) or [1.0, 2.0, 3.0, 3.0, 2.0, 1.0]
    )
    profile = DeviceProfile("edge", max_blocks=2).as_config()
    clients = [ClientInfo(node_id=10 + p, partition_id=p, profile=profile) for p in range(2)]
    for round_number in (1, 2):
        planned = planner.plan(round_number, clients, state)
        assert all(len(p.plan.train_groups) == 3 for p in planned.values()), "two blocks and the head"
    assert len(passes) == (2 if scored else 0)
    assert (planner.state_dict()["importance"] == [0.0] * 6) is not scored


def test_leff_least_trained_windows_cover_the_model_and_survive_a_resume(tmp_path: Path) -> None:
    """The planner counts every planned window's blocks, gives the next client a window trained least
    often, and checkpoints the counts: a planner restored from its state plans round 2 exactly alike."""
    model_dir = make_tiny_model_dir(tmp_path / "bert6", "bert", layers=6)
    overrides = {"leff.window": "least-trained", "leff.stand-in": "bfloat16", "proxy.examples": 16}
    planner, _, state = _planner_and_state(model_dir, tmp_path, method="leff", **overrides)
    profile = DeviceProfile("edge", max_blocks=2).as_config()
    clients = [ClientInfo(node_id=10 + p, partition_id=p, profile=profile) for p in range(3)]
    planner.plan(1, clients, state)
    after_one = planner.state_dict()["trained"]
    assert sum(after_one) == 6 and max(after_one) <= 2

    restored, _, _ = _planner_and_state(model_dir, tmp_path / "again", method="leff", **overrides)
    restored.load_state_dict(planner.state_dict())
    planner.plan(2, clients[:1], state)
    restored.plan(2, clients[:1], state)
    assert restored.state_dict()["windows"] == planner.state_dict()["windows"]
    assert restored.state_dict()["trained"] == planner.state_dict()["trained"]
    assert sum(planner.state_dict()["trained"]) == 8
    ((start, width),) = planner.state_dict()["windows"].values()
    window_sums = [sum(after_one[s : s + width]) for s in range(6 - width + 1)]
    assert sum(after_one[start : start + width]) == min(window_sums)


@pytest.mark.parametrize("kept", [0, 8])
def test_leff_warm_starts_a_segment_sampled_again(tmp_path: Path, kept: int) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "bert6", "bert", layers=6)
    overrides = {
        "leff.stand-in": "students",
        "leff.window": "round-robin",
        "leff.distill-steps": 3,
        "leff.warm-distill-steps": 1,
        "leff.warm-students": kept,
        "proxy.examples": 16,
        "rounds": 3,
    }
    planner, model, state = _planner_and_state(model_dir, tmp_path, method="leff", **overrides)
    # width 6 // 2 = 3 from round-robin's start 0 then 3: segments (3, 6) then (0, 3), then (3, 6) again
    clients = [
        ClientInfo(node_id=10, partition_id=0, profile=DeviceProfile("edge", max_blocks=3).as_config())
    ]
    first = planner.plan(1, clients, state)
    planner.plan(2, clients, state)
    third = planner.plan(3, clients, state)
    assert first[10].plan.block_sources == third[10].plan.block_sources
    assert planner.state_dict()["warm_starts"] == (1 if kept else 0)
    assert len(planner.warm) == min(kept, 2)
    layer_map = LayerMap(model)
    student_names = [n for n in first[10].payload if (layer_map.block_index(n) or 0) >= 3]
    assert student_names and set(student_names) <= set(third[10].payload)
    moved = any(not torch.equal(first[10].payload[n], third[10].payload[n]) for n in student_names)
    # one proxy batch: a cold student's steps repeat exactly, so only a warm start can differ
    assert moved == bool(kept), "only a warm start trains the earlier student further"


def _leff_llama6_passing_through(tmp_path: Path, blocks: list[int], **overrides: object) -> tuple:
    """A LEFF planner (round-robin windows, undistilled students) over a tiny 6-block Llama whose
    ``blocks`` are made pass-through (zero output projections), and the model."""
    model_dir = make_tiny_model_dir(tmp_path / "llama6", "llama", layers=6)
    settings = {
        "leff.stand-in": "students",
        "leff.window": "round-robin",
        "leff.distill-steps": 0,
        "proxy.examples": 16,
        "model.task": "causal-lm",
        **overrides,
    }
    cfg = tiny_run_config(model_dir, tmp_path, method="leff", **settings)
    model, tokenizer = build_model(cfg, num_labels=0)
    with torch.no_grad():
        for index in blocks:
            model.model.layers[index].self_attn.o_proj.weight.zero_()
            model.model.layers[index].mlp.down_proj.weight.zero_()
    return make_planner(cfg, model, tokenizer), model


@pytest.mark.parametrize(("init", "expected"), [("sensitive", [3, 5]), ("uniform", [2, 5])])
def test_leff_students_start_from_the_blocks_the_run_asks_for(
    tmp_path: Path, init: str, expected: list[int]
) -> None:
    """``leff.student-init``: with blocks 2 and 4 made pass-through, sensitive students copy 3 and 5."""
    planner, model = _leff_llama6_passing_through(tmp_path, [2, 4], **{"leff.student-init": init})
    assert (planner.student_sensitivity is not None) == (init == "sensitive")
    # round-robin's first window for a 2-block device is 0-1: blocks 2-5 become a 2-block student
    clients = [
        ClientInfo(node_id=10, partition_id=0, profile=DeviceProfile("edge", max_blocks=2).as_config())
    ]
    planner.plan(1, clients, tunable_state(model))
    assert list(planner.cache) == [(2, 6)]
    assert planner.cache[(2, 6)].source_indices == expected


@pytest.mark.parametrize("keep", [False, True])
def test_leff_students_keep_protected_blocks_whole_when_asked(tmp_path: Path, keep: bool) -> None:
    """``leff.keep-protected``: with blocks 3-5 pass-through, the median sensitivity sits at half the
    smallest of blocks 0-2, so the two others are protected and the student of blocks 0-2 keeps both."""
    planner, model = _leff_llama6_passing_through(tmp_path, [3, 4, 5], **{"leff.keep-protected": keep})
    assert len(planner.protected) == (2 if keep else 0) and planner.protected <= {0, 1, 2}
    clients = [
        ClientInfo(node_id=10, partition_id=0, profile=DeviceProfile("edge", max_blocks=3).as_config())
    ]
    planner.plan(2, clients, tunable_state(model))  # round-robin's second window is 3-5
    sources = planner.cache[(0, 3)].source_indices
    if keep:
        assert sources == [0, 1, 2], "2 protected + ceil(1 x 0.5): the segment stays exact"
    else:
        assert len(sources) == 2 and sources[-1] == 2, "the paper's ceil(3 x 0.5) drops one of 0 and 1"


def test_no_plan_exceeds_a_small_memory_budget(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A device whose memory trains 1 of the 4 blocks: LEFF's window is one block wide, and every one of
    DropPEFT's arms runs at a mean rate that leaves one block per step on average."""
    small = DeviceProfile("measured", memory_mb=300.0, memory_blocks=1).as_config()
    ample = DeviceProfile("measured", memory_mb=300.0, memory_blocks=9).as_config()
    clients = [ClientInfo(10, 0, profile=small), ClientInfo(11, 1, profile=ample)]
    overrides = {"leff.window": "round-robin", "proxy.examples": 16}
    leff, _, state = _planner_and_state(tiny_models["bert"], tmp_path, method="leff", **overrides)
    planned = leff.plan(1, clients, state)
    widths = {n: sum(g.startswith("block.") for g in p.plan.train_groups) for n, p in planned.items()}
    assert widths == {10: 1, 11: 2}, "the ample device keeps its capacity-sized window (0.5 x 4)"

    droppeft, _, state = _planner_and_state(
        tiny_models["bert"], tmp_path, method="droppeft", **{"droppeft.rates": "0,0.15,0.3", "rounds": 3}
    )
    for round_number in (1, 2, 3):  # the bandit tries each arm once
        planned = droppeft.plan(round_number, clients, state)
        small_rates, ample_rates = planned[10].plan.drop_rates, planned[11].plan.drop_rates
        assert sum(1 - r for r in small_rates) == pytest.approx(1.0)
        assert sum(ample_rates) / 4 == pytest.approx([0, 0.15, 0.3][round_number - 1])
        metrics = {wire.PROBE_LOSS_BEFORE: 0.7, wire.PROBE_LOSS_AFTER: 0.5, wire.DEVICE_TIME_S: 2.0}
        droppeft.observe(round_number, [ClientResult(0, True, metrics), ClientResult(1, True, metrics)])
