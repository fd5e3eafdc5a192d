"""Device profiles: how fast a client computes and how much it may hold.

In deployment a SuperNode states its profile in its node config (``device=jetson-orin`` or explicit
``speed=0.25 memory-mb=8000 max-blocks=3``). In simulation every client runs on the same host, so the
run config assigns profiles to partitions and a slow device is emulated by scaling its measured compute
time into a *device time* (no sleeping: runs stay fast). Planners (the dropout bandit, LEFF's windows)
see only device time, so they adapt to heterogeneity exactly as they would on real hardware.
The numbers below are this project's illustrative classes, not measurements of those devices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    #: throughput relative to a workstation (0.25 = four times slower)
    speed: float = 1.0
    #: memory a training round may use on this device
    memory_mb: float = 24000.0
    #: share of the model's blocks the device can train at once (LEFF's L_i = capacity * L)
    capacity: float = 0.5
    #: explicit L_i from the node config; 0 = derive from capacity
    max_blocks: int = 0

    def trainable_blocks(self, num_blocks: int) -> int:
        """LEFF's L_i for a model of num_blocks blocks: at least 1, at most all."""
        wanted = self.max_blocks or round(self.capacity * num_blocks)
        return max(1, min(num_blocks, wanted))

    def as_config(self) -> dict[str, Any]:
        return {f"device-{k.replace('_', '-')}": v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> DeviceProfile:
        """Inverse of as_config (what a client reported in its info reply); unknown keys are ignored."""
        known = {f"device-{f.name.replace('_', '-')}": f.name for f in fields(cls)}
        return cls(**{known[k]: v for k, v in values.items() if k in known})


PROFILES: dict[str, DeviceProfile] = {
    "workstation": DeviceProfile("workstation", speed=1.0, memory_mb=24000, capacity=0.5),
    "cpu-box": DeviceProfile("cpu-box", speed=0.5, memory_mb=8000, capacity=0.34),
    "jetson-orin": DeviceProfile("jetson-orin", speed=0.25, memory_mb=4000, capacity=0.17),
}


def profile_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise ValueError(f"devices.profiles: unknown profile(s) {unknown}; known: {sorted(PROFILES)}")
    return names


def profile_for(partition_id: int, spec: str, node_config: dict[str, Any]) -> DeviceProfile:
    """A node's own config wins; otherwise the run config's profile list, cycled over partitions."""
    names = profile_names(spec)
    name = str(node_config.get("device", names[partition_id % len(names)] if names else "workstation"))
    if name not in PROFILES:
        raise ValueError(f"node config device={name!r} is unknown; known: {sorted(PROFILES)}")
    base = PROFILES[name]
    return DeviceProfile(
        name=name,
        speed=float(node_config.get("speed", base.speed)),
        memory_mb=float(node_config.get("memory-mb", base.memory_mb)),
        capacity=float(node_config.get("capacity", base.capacity)),
        max_blocks=int(node_config.get("max-blocks", base.max_blocks)),
    )
