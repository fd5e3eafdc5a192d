"""Bounding one client's influence: its weight (statement, start-up size, plan, round median) and the
length of its update per layer group (clipped to a multiple of the round's median norm)."""

from __future__ import annotations

import math

import pytest
import torch

from fedcore.core.aggregate import ClientUpdate, aggregate_layerwise
from fedcore.core.robust import cap_weights, clip_updates, group_norms, stated_weight

WEIGHT_CAP = 2.0  # round.weight-cap's default


def _group_of(name: str) -> str:
    return name.split(".")[0]


def test_weight_is_the_stated_dataset_size_bounded_by_the_start_up_statement() -> None:
    assert stated_weight(9_999_999, partition_size=500) == 500
    assert stated_weight(100, partition_size=500) == 100
    assert stated_weight(700, partition_size=0) == 700
    # FedAvg's weight: a step-counted round (20 x 8 = 160 examples touched) still weighs its dataset
    assert stated_weight(500, partition_size=500) == 500


def test_no_weight_above_the_cap_times_the_lower_median() -> None:
    updates = [ClientUpdate(i, w, {}) for i, w in enumerate([100, 120, 9_999_999])]
    assert [u.weight for u in cap_weights(updates, WEIGHT_CAP)] == [100, 120, WEIGHT_CAP * 120]
    two = cap_weights([ClientUpdate(0, 100, {}), ClientUpdate(1, 10**6, {})], WEIGHT_CAP)
    assert [u.weight for u in two] == [100, WEIGHT_CAP * 100]  # the lower median: the honest one
    assert [u.weight for u in cap_weights(updates, 3.0)] == [100, 120, 360]


def test_weight_cap_zero_keeps_fedavg_weights() -> None:
    updates = [ClientUpdate(i, w, {}) for i, w in enumerate([100, 120, 9_999_999])]
    assert [u.weight for u in cap_weights(updates, 0.0)] == [100, 120, 9_999_999]


def test_norms_are_per_group_and_do_not_overflow() -> None:
    update = {"a.w": torch.full((4,), 1e30), "a.b": torch.zeros(2), "b.w": torch.tensor([3.0, 4.0])}
    norms = group_norms(update, _group_of)
    assert norms["b"] == 5.0
    assert math.isclose(norms["a"], 2e30, rel_tol=1e-6)


def test_clipping_scales_only_the_outlying_group_of_the_outlier() -> None:
    honest = [{"a.w": torch.tensor([1.0, 0.0]), "b.w": torch.tensor([0.0, 2.0])} for _ in range(2)]
    hostile = {"a.w": torch.tensor([-1000.0, 0.0]), "b.w": torch.tensor([0.0, 2.0])}
    updates = [ClientUpdate(i, 1, u) for i, u in enumerate([*honest, hostile])]
    clipped, scales = clip_updates(updates, _group_of, factor=2.0)
    assert scales == [1.0, 1.0, pytest.approx(2.0 / 1000.0)]
    assert torch.equal(clipped[2].update["a.w"], torch.tensor([-2.0, 0.0]))
    assert clipped[2].update["b.w"] is hostile["b.w"]  # its other group is in line: untouched
    assert all(
        clipped[i].update is updates[i].update or clipped[i].update == updates[i].update for i in (0, 1)
    )
    assert all(torch.equal(clipped[i].update[k], honest[i][k]) for i in (0, 1) for k in honest[i])


def test_clipping_over_the_contributors_of_each_group_only() -> None:
    """A group two clients sent is clipped against those two (the lower median), not the whole round."""
    updates = [
        ClientUpdate(0, 1, {"a.w": torch.tensor([1.0])}),
        ClientUpdate(1, 1, {"a.w": torch.tensor([1.0]), "b.w": torch.tensor([10.0])}),
        ClientUpdate(2, 1, {"b.w": torch.tensor([100.0])}),
    ]
    clipped, scales = clip_updates(updates, _group_of, factor=3.0)
    assert clipped[2].update["b.w"].item() == 30.0
    assert scales == [1.0, 1.0, 0.3]


def test_clients_that_left_a_group_unchanged_do_not_set_its_median() -> None:
    """A block a client dropped in every step comes back as zeros: the others are not clipped to zero."""
    updates = [
        ClientUpdate(0, 1, {"a.w": torch.zeros(2)}),
        ClientUpdate(1, 1, {"a.w": torch.tensor([3.0, 4.0])}),
    ]
    clipped, scales = clip_updates(updates, _group_of, factor=2.0)
    assert scales == [1.0, 1.0] and clipped == updates
    alone = clip_updates([ClientUpdate(0, 1, {"a.w": torch.zeros(2)})], _group_of, factor=2.0)
    assert alone[1] == [1.0]


def test_clip_factor_zero_is_off() -> None:
    updates = [
        ClientUpdate(0, 1, {"a.w": torch.tensor([1.0])}),
        ClientUpdate(1, 1, {"a.w": torch.tensor([1e30])}),
    ]
    clipped, scales = clip_updates(updates, _group_of, factor=0.0)
    assert clipped == updates and scales == [1.0, 1.0]


@pytest.mark.parametrize("attack", ["reversed x1000", "all 1e30", "tiny"])
@pytest.mark.parametrize("weight", [16, 9_999_999])
def test_one_client_moves_a_round_at_most_its_bounded_share(attack: str, weight: int) -> None:
    """The README's per-round bound, exactly: after capping and clipping, the mean of a group differs from
    the mean of the other clients alone by at most s * (c * m + M): s the client's weight share, m the
    round's lower-median norm of the group, M the largest norm among the others."""
    generator = torch.Generator().manual_seed(0)
    honest = [
        {"a.w": torch.randn(6, generator=generator), "b.w": torch.randn(3, generator=generator)}
        for _ in range(3)
    ]
    change = {
        "reversed x1000": lambda t: -1000 * t,
        "all 1e30": lambda t: torch.full_like(t, 1e30),
        "tiny": lambda t: 1e-9 * t,
    }[attack]
    hostile = {name: change(t) for name, t in honest[0].items()}
    factor = 2.0
    updates = [ClientUpdate(i, 16, u) for i, u in enumerate(honest)] + [ClientUpdate(9, weight, hostile)]
    bounded, _ = clip_updates(cap_weights(updates, WEIGHT_CAP), _group_of, factor)
    old = {"a.w": torch.zeros(6), "b.w": torch.zeros(3)}
    with_it = aggregate_layerwise(old, bounded)
    without = aggregate_layerwise(old, bounded[:3])
    share = bounded[3].weight / sum(u.weight for u in bounded)
    assert share <= WEIGHT_CAP / (WEIGHT_CAP + 3)
    for group in ("a", "b"):
        norms = [group_norms(u.update, _group_of)[group] for u in updates]
        median, largest = sorted(norms)[(len(norms) - 1) // 2], max(norms[:3])
        moved = (with_it[f"{group}.w"] - without[f"{group}.w"]).norm().item()
        assert moved <= share * (factor * median + largest) * (1 + 1e-6)


def test_a_sole_contributor_is_bounded_by_the_others_rms_of_its_kind() -> None:
    """block.2 only client 2 changed: its norm is cut to factor x sqrt(4) x the others' median RMS of
    blocks (client 0: RMS 1 over block.0; client 1: RMS 3 over block.1 -> lower median 1)."""

    def blocks(name: str) -> str:
        return ".".join(name.split(".")[:2])

    updates = [
        ClientUpdate(0, 1, {"block.0.w": torch.ones(4), "head.w": torch.ones(2)}),
        ClientUpdate(1, 1, {"block.1.w": torch.full((4,), 3.0), "head.w": torch.ones(2)}),
        ClientUpdate(2, 1, {"block.2.w": torch.full((4,), 1000.0), "head.w": torch.ones(2)}),
    ]
    clipped, scales = clip_updates(updates, blocks, factor=2.0)
    assert clipped[2].update["block.2.w"].norm().item() == pytest.approx(2.0 * 2.0 * 1.0)
    assert scales[2] == pytest.approx(4.0 / 2000.0)
    # client 0 (norm 2) is within 2 x 2 x 3; client 1 (norm 6) is cut to 2 x 2 x 1, the lower median
    assert scales[0] == 1.0 and scales[1] == pytest.approx(4.0 / 6.0)
    alone = clip_updates([ClientUpdate(0, 1, {"block.0.w": torch.full((4,), 1e6)})], blocks, factor=2.0)
    assert alone[1] == [1.0]  # nothing to compare with: a federation of one is not bounded


def test_a_weight_the_server_counted_itself_is_not_capped() -> None:
    """A shared dataset's partition sizes are the server's own count: an honest federation keeps exactly
    FedAvg's weights, however uneven; only weights resting on a client's statement are capped."""
    updates = [
        ClientUpdate(0, 100, {}, weight_checked=True),
        ClientUpdate(1, 120, {}, weight_checked=True),
        ClientUpdate(2, 2000, {}, weight_checked=True),
        ClientUpdate(3, 9_999_999, {}),
    ]
    assert [u.weight for u in cap_weights(updates, WEIGHT_CAP)] == [100, 120, 2000, WEIGHT_CAP * 120]
