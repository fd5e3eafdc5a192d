"""Hostile clients and careless nodes through the real server loop (Ray simulations): one client cannot
take over the global model, and no reply or start-up statement can crash the server."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from safetensors.torch import load_file

from client_app.app import info, train
from client_app.info import node_info
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.wire import config_to_dict, received_state, state_to_arrays
from fedcore.model import build_model, tunable_state
from server_app.checkpoint import load_checkpoint
from tests.conftest import make_tiny_model_dir, tiny_run_config
from tests.simulate import simulate

Attack = Callable[[int, RecordDict], None]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoint" / "global.safetensors")


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a))


def partition(context: Context) -> int:
    return int(context.node_config[wire.NODE_PARTITION_ID])


def hostile_client(attack: Attack) -> ClientApp:
    """The real client, whose train reply ``attack(partition, content)`` then rewrites in place."""
    app = ClientApp()

    @app.train()
    def hostile_train(msg: Message, context: Context) -> Message:
        reply = train(msg, context)
        attack(partition(context), reply.content)
        return Message(reply.content, reply_to=msg)

    app.query(wire.INFO_QUERY)(info)
    return app


def set_update(content: RecordDict, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    update = received_state(content.array_records[wire.UPDATE])
    content[wire.UPDATE] = state_to_arrays({name: change(t) for name, t in update.items()})


def set_metrics(content: RecordDict, change: Callable[[dict[str, Any]], None]) -> None:
    metrics = dict(content.metric_records[wire.TRAIN_METRICS])
    change(metrics)
    content[wire.TRAIN_METRICS] = MetricRecord(metrics)


# ------------------------------------------------------------------------------------- one client's reach

HOSTILE = 2  # of partitions 0..2


def huge_count_reversed_x1000(p: int, content: RecordDict) -> None:
    if p == HOSTILE:
        set_metrics(content, lambda m: m.update({wire.EXAMPLES: 9_999_999}))
        set_update(content, lambda t: -1000 * t)


def all_1e30(p: int, content: RecordDict) -> None:
    if p == HOSTILE:
        set_update(content, lambda t: torch.full_like(t, 1e30))


#: (attack, run config overrides): the defaults (weighted mean, clip-factor 2), and the median alone
CASES: dict[str, tuple[Attack, dict[str, Any]]] = {
    "9,999,999 examples, reversed x1000": (huge_count_reversed_x1000, {}),
    "all 1e30": (all_1e30, {}),
    "all 1e30, median, no clipping": (all_1e30, {"round.aggregator": "median", "round.clip-factor": 0.0}),
}
#: how far from the honest run's final model one hostile client of three may pull it, in multiples of the
#: honest run's own movement: clip-factor + 1 (README, Failure behaviour)
BOUND = 3.0
SMALL = {"rounds": 2, "clients.min": 2}


@pytest.fixture(scope="module")
def honest(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The federation where all three clients behave: its final model and how far it moved."""
    cfg = tiny_run_config(tiny_models["bert"], tmp_path_factory.mktemp("honest"), **SMALL)
    start = tunable_state(build_model(cfg, num_labels=2)[0])
    final = final_state(simulate(cfg, supernodes=3))
    return {"final": final, "moved": distance(final, start)}


@pytest.mark.parametrize("case", list(CASES))
def test_one_hostile_client_cannot_take_over_the_model(
    case: str, honest: dict[str, Any], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Its weight is capped, its update clipped (or outvoted by the median): the final model stays within
    BOUND x the honest run's movement of the honest run's."""
    attack, overrides = CASES[case]
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, **SMALL, **overrides)
    run_dir = simulate(cfg, supernodes=3, client_app=hostile_client(attack))
    pulled = distance(final_state(run_dir), honest["final"]) / honest["moved"]
    print(f"{case}: {pulled:.3f} x the honest run's movement")
    assert pulled <= BOUND
    client_rows = [r for r in rows(run_dir) if r["kind"] == "client"]
    assert [r["status"] for r in client_rows] == ["ok"] * 6
    hostile = [r for r in client_rows if r["partition_id"] == HOSTILE]
    for round_number in (1, 2):  # not 9,999,999: at most its start-up partition size, then the cap
        weights = {r["partition_id"]: r["weight"] for r in client_rows if r["round"] == round_number}
        honest_weights = [w for p, w in weights.items() if p != HOSTILE]
        median = statistics.median_low([weights[HOSTILE], *honest_weights])
        assert weights[HOSTILE] <= cfg.round.weight_cap * median
    if cfg.round.clip_factor:
        assert all(r["clip_scale"] < 0.01 for r in hostile)


# ------------------------------------------------------------------------ a block only the attacker trained

#: LEFF on 8 blocks: the hostile node (partition 2) is a workstation training a 4-block window, the honest
#: ones are Jetsons training one block each, so most of the attacker's blocks have no other contributor;
#: DropPEFT: the honest clients drop most of their blocks, the attacker none
SOLE: dict[str, dict[str, Any]] = {
    "leff": {"method": "leff", "devices.profiles": "jetson-orin,jetson-orin,workstation"},
    "droppeft": {"method": "droppeft", "drop.mode": "fixed", "drop.mean-rate": 0.9, "ptls.fraction": 0.0},
}


def reversed_x1000(p: int, content: RecordDict) -> None:
    if p == HOSTILE:
        set_update(content, lambda t: -1000 * t)


@pytest.mark.parametrize("method", list(SOLE))
def test_a_sole_contributor_is_bounded_by_the_others_updates(method: str, tmp_path: Path) -> None:
    """Blocks only the hostile client changed have no median to clip to: the bound of their kind
    (fedcore/core/robust.py) keeps its x1000 update within BOUND x the honest run's movement."""
    model_dir = make_tiny_model_dir(tmp_path / "bert8", "bert", layers=8)
    overrides = {**SMALL, "leff.distill-steps": 2, **SOLE[method]}
    cfg = tiny_run_config(model_dir, tmp_path / "honest", **overrides)
    start = tunable_state(build_model(cfg, num_labels=2)[0])
    honest_final = final_state(simulate(cfg, supernodes=3))
    moved = distance(honest_final, start)
    cfg = tiny_run_config(model_dir, tmp_path / "attacked", **overrides)
    run_dir = simulate(cfg, supernodes=3, client_app=hostile_client(reversed_x1000))
    pulled = distance(final_state(run_dir), honest_final) / moved
    print(f"{method}, reversed x1000: {pulled:.3f} x the honest run's movement")
    assert pulled <= BOUND
    hostile = [r for r in rows(run_dir) if r["kind"] == "client" and r["partition_id"] == HOSTILE]
    assert [r["status"] for r in hostile] == ["ok", "ok"]
    assert all(r["clip_scale"] < 0.01 for r in hostile)


# ------------------------------------------------------------------------------------ replies that crashed it


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    def drop(metrics: dict[str, Any]) -> None:
        del metrics[key]

    return drop


def _setting(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda metrics: metrics.update(values)


def _as_dtype(dtype: torch.dtype) -> Attack:
    def rewrite(p: int, content: RecordDict) -> None:
        update = received_state(content.array_records[wire.UPDATE])
        content[wire.UPDATE] = ArrayRecord({name: t.to(dtype) for name, t in update.items()})

    return rewrite


def _metrics(change: Callable[[dict[str, Any]], None]) -> Attack:
    return lambda p, content: set_metrics(content, change)


#: partition -> (how its reply is spoiled, why the server must reject it); 0, 1 and 11 behave
BAD_REPLIES: dict[int, tuple[Attack, str]] = {
    2: (_metrics(_without(wire.PEAK_RSS_MB)), r"missing \['peak_rss_mb'\]"),
    3: (_metrics(_setting(**{wire.PEAK_RSS_MB: [1.0, 2.0]})), "peak_rss_mb: expected a number"),
    4: (_metrics(_setting(**{wire.PROBE_LOSS_BEFORE: math.nan})), "probe_loss_before: not finite"),
    5: (_metrics(_setting(**{wire.DEVICE_TIME_S: 0.0})), r"device_time_s: 0 outside \(0"),
    6: (_metrics(_without(wire.PROBE_LOSS_AFTER)), r"missing \['probe_loss_after'\]"),
    7: (_metrics(_setting(partition_id=99, node_id=1)), r"unknown keys \['node_id', 'partition_id'\]"),
    8: (_as_dtype(torch.int32), "dtype torch.int32, but this run's wire dtype is torch.float32"),
    9: (_as_dtype(torch.float64), "dtype torch.float64"),
    10: (_as_dtype(torch.float16), "dtype torch.float16"),
}
BRAGGART = 11  # sound, but claims 1e15 bytes sent and received


def spoil_reply(p: int, content: RecordDict) -> None:
    if p in BAD_REPLIES:
        BAD_REPLIES[p][0](p, content)
    elif p == BRAGGART:
        set_metrics(content, _setting(**{wire.BYTES_UP: 10**15, wire.BYTES_DOWN: 10**15}))


def test_bad_replies_are_rejected_and_droppeft_goes_on(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Each reply that crashed the server (row building, DropPEFT's observe) is rejected with its reason;
    the rounds complete and the bandit learns from the sound clients only."""
    two_arms = {"droppeft.rates": "0.15,0.3"}  # one arm (the default) leaves the bandit nothing to learn
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="droppeft", rounds=2, **two_arms)
    run_dir = simulate(cfg, supernodes=12, client_app=hostile_client(spoil_reply))

    client_rows = [r for r in rows(run_dir) if r["kind"] == "client"]
    assert len(client_rows) == 24
    for row in client_rows:
        p = row["partition_id"]
        if p in BAD_REPLIES:
            assert row["status"] == "rejected", row
            assert re.search(BAD_REPLIES[p][1], row["reason"]), row["reason"]
        else:
            assert row["status"] == "ok", row
    ok = {r["partition_id"]: r for r in client_rows if r["status"] == "ok" and r["round"] == 1}
    assert ok[BRAGGART][wire.BYTES_UP] == ok[0][wire.BYTES_UP] < 10**9
    assert ok[BRAGGART][wire.BYTES_DOWN] == ok[0][wire.BYTES_DOWN] < 10**9
    assert [r["clients_ok"] for r in rows(run_dir) if r["kind"] == "global" and r["round"]] == [3, 3]
    devices = load_checkpoint(run_dir).planner_state["bandit"]["devices"]
    assert {key: stats["updates"] for key, stats in devices.items()} == {
        "client-0": 2,
        "client-1": 2,
        f"client-{BRAGGART}": 2,
    }


# --------------------------------------------------------------------------------- start-up statements


def hostile_info(change: Callable[[int, Context, Message], Message]) -> ClientApp:
    app = ClientApp()
    app.train()(train)

    @app.query(wire.INFO_QUERY)
    def statement(msg: Message, context: Context) -> Message:
        return change(partition(context), context, msg)

    return app


def _stating(**values: Any) -> Callable[[Context, Message], Message]:
    """The honest statement with ``values`` changed (None: key left out)."""

    def rewrite(context: Context, msg: Message) -> Message:
        reply = info(msg, context)
        stated = {**config_to_dict(reply.content.config_records[wire.NODE_INFO]), **values}
        reply.content[wire.NODE_INFO] = ConfigRecord({k: v for k, v in stated.items() if v is not None})
        return Message(reply.content, reply_to=msg)

    return rewrite


def _honest_with_node_config(**values: Any) -> Callable[[Context, Message], Message]:
    """An honest client whose operator wrote ``values`` into its node config."""

    def answer(context: Context, msg: Message) -> Message:
        cfg = RunConfig.from_flat(config_to_dict(msg.content.config_records[wire.RUN_CONFIG]))
        return Message(node_info({**context.node_config, **values}, cfg), reply_to=msg)

    return answer


#: partition -> (its start-up statement, the status and reason logged for it); 0 and 1 behave
BAD_NODES: dict[int, tuple[Callable[[Context, Message], Message], str, str]] = {
    2: (_stating(**{wire.NODE_PARTITION_ID: None}), "refused", r"missing \['partition-id'\]"),
    3: (_stating(**{wire.NODE_NUM_EXAMPLES: "lots"}), "refused", "num-examples: expected an integer"),
    4: (_honest_with_node_config(speed=math.inf), "unreachable", "speed=inf must be a number in"),
    5: (_stating(**{"device-capacity": math.nan}), "refused", "device-capacity: not finite"),
    6: (_stating(**{wire.NODE_PARTITION_ID: 99}), "refused", "partition-id=99 is unknown"),
    7: (_stating(**{wire.NODE_PARTITION_ID: 1}), "refused", "partition-id 1 is claimed by nodes"),
}
#: a partition two nodes claim at the first start goes to neither (server_app/nodes.py assign_partitions)
CONTESTED = 7


def careless_statement(p: int, context: Context, msg: Message) -> Message:
    if p in BAD_NODES:
        return BAD_NODES[p][0](context, msg)
    return info(msg, context)


def test_bad_start_up_statements_refuse_the_node_and_leff_runs(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Nodes whose start-up reply breaks the schema (or whose node config no device has) are left out
    with the reason logged; LEFF, which reads every profile, runs with the others."""
    overrides = {"leff.distill-steps": 1, "proxy.examples": 16, "rounds": 1, "clients.min": 1}
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, method="leff", **overrides)
    run_dir = simulate(cfg, supernodes=8, client_app=hostile_info(careless_statement))

    node_rows = [r for r in rows(run_dir) if r["kind"] == "node" and r["status"] != "ready"]
    assert len(node_rows) == len(BAD_NODES) + 1  # the contested partition's honest claimant too
    for p, (_, status, pattern) in BAD_NODES.items():
        matching = [r for r in node_rows if r["status"] == status and re.search(pattern, r["reason"])]
        assert len(matching) == (2 if p == CONTESTED else 1), (status, pattern, node_rows)
    trained = {r["partition_id"] for r in rows(run_dir) if r["kind"] == "client" and r["status"] == "ok"}
    assert trained == {0}
    assert (run_dir / "summary.json").exists()


def test_float16_wire_replies_are_accepted(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """round.wire-dtype=float16 legitimately sends fp16: the dtype check follows the run's wire dtype."""
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, rounds=1, **{"round.wire-dtype": "float16"})
    run_dir = simulate(cfg, supernodes=2)
    assert [r["status"] for r in rows(run_dir) if r["kind"] == "client"] == ["ok", "ok"]
