"""The client's CPU threads: as many as its share of the CPU, waiting without spinning.

torch's OpenMP threads busy-wait at the end of each parallel region by default. When another process
holds one of the cores a client's threads run on, the spinning threads burn the time the preempted one
needs, and every training step waits for it: on a shared machine a round took over twice as long. So the
client asks OpenMP to sleep instead (``OMP_WAIT_POLICY=PASSIVE``; a value already set is kept) and uses
exactly its share of the CPU: ``OMP_NUM_THREADS`` when set (a Ray simulation sets it to the client's
``client-resources-num-cpus``), else the cores the process may run on (affinity, and a cgroup CPU quota
such as a container's ``--cpus``). This is the project's own setting, chosen by
``benchmarks/shared_cpu.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

WAIT_POLICY = "OMP_WAIT_POLICY"
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def wait_passively() -> None:
    """OpenMP threads sleep when idle; effective only before torch (and its OpenMP runtime) is loaded."""
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def _quota_cores(cpu_max: Path) -> int | None:
    """Whole cores of a cgroup v2 CPU quota ("200000 100000" -> 2), None when unlimited or unreadable."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return max(1, math.floor(int(quota) / int(period)))
    except (OSError, ValueError):  # "max" (no quota), no cgroup v2, malformed
        return None


def cpu_share(env: dict[str, str] | None = None, cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """Threads this process should train with."""
    env = dict(os.environ) if env is None else env
    try:
        return max(1, int(env["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _quota_cores(cpu_max)
    return min(usable, quota) if quota else usable


def use_cpu_share() -> int:
    """Set torch's intra-op threads to the share (at the start of every round: a Ray actor serves many)."""
    import torch

    threads = cpu_share()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
