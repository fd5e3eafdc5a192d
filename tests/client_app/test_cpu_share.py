"""The client trains with its share of the CPU and asks OpenMP not to spin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from client_app.cpu_share import cpu_share, use_cpu_share, wait_passively


def _cpu_max(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


def test_the_share_is_omp_num_threads_when_set(tmp_path: Path) -> None:
    assert cpu_share({"OMP_NUM_THREADS": "3"}, tmp_path / "absent") == 3
    assert cpu_share({"OMP_NUM_THREADS": "0"}, tmp_path / "absent") == 1


def test_without_omp_num_threads_the_share_is_the_usable_cores_within_a_cgroup_quota(tmp_path: Path) -> None:
    usable = len(os.sched_getaffinity(0))
    assert cpu_share({}, tmp_path / "absent") == usable
    assert cpu_share({}, _cpu_max(tmp_path, "max 100000\n")) == usable
    assert cpu_share({}, _cpu_max(tmp_path, "50000 100000\n")) == 1  # half a core still trains
    assert cpu_share({"OMP_NUM_THREADS": "junk"}, _cpu_max(tmp_path, "100000 100000\n")) == 1


def test_torch_threads_follow_the_share(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    monkeypatch.setenv("OMP_NUM_THREADS", str(wanted))
    try:
        assert use_cpu_share() == wanted and torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_the_wait_policy_is_passive_unless_the_user_chose_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
