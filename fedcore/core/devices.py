"""Device profiles: how fast a client computes and how much it may hold.

Three sources, in order. What a SuperNode states in its node config (``device=jetson-orin``, or values
such as ``speed=0.25 memory-mb=8000 max-blocks=3``) wins. In deployment a node that names no ``device``
measures itself at start-up on the run's model (``Calibration``); values it states still override the
measured ones. In simulation every client runs on the same host, so the run config's profile list is
cycled over partitions and a slow device is emulated by scaling its measured compute time into a
*device time* (no sleeping: runs stay fast); in deployment device time is the real compute time.
Planners (the dropout bandit, LEFF's windows) see only device time, so they adapt to heterogeneity
exactly as they would on real hardware. The named profiles below are this project's illustrative
classes, not measurements of those devices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

#: what a profile may state, per node-config key: (exclusive lower bound, inclusive upper bound)
LIMITS: dict[str, tuple[float, float]] = {
    "speed": (0.0, 1e3),
    "memory-mb": (0.0, 1e9),
    "capacity": (0.0, 1.0),
}


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
    #: blocks whose training fits ``memory_mb`` beside the model (measured at start-up); 0 = not known
    memory_blocks: int = 0

    def __post_init__(self) -> None:
        """Refuse what no device has: planners divide by speed and multiply by capacity."""
        stated = {"speed": self.speed, "memory-mb": self.memory_mb, "capacity": self.capacity}
        for key, value in stated.items():
            low, high = LIMITS[key]
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low < value <= high):
                raise ValueError(
                    f"device {self.name!r}: {key}={value!r} must be a number in ({low:g}, {high:g}]"
                )
        for key, value in {"max-blocks": self.max_blocks, "memory-blocks": self.memory_blocks}.items():
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"device {self.name!r}: {key}={value!r} must be an integer >= 0")

    def trainable_blocks(self, num_blocks: int) -> int:
        """LEFF's L_i for a model of num_blocks blocks: at least 1, at most all, at most what fits memory."""
        wanted = self.max_blocks or round(self.capacity * num_blocks)
        return max(1, min(num_blocks, wanted, self.memory_blocks or num_blocks))

    def as_config(self) -> dict[str, Any]:
        return {f"device-{k.replace('_', '-')}": v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> DeviceProfile:
        """Inverse of as_config (what a client reported in its info reply); unknown keys are ignored."""
        known = {f"device-{f.name.replace('_', '-')}": f.name for f in fields(cls)}
        return cls(**{known[k]: v for k, v in values.items() if k in known})


def speed_matched_steps(steps: int, speed: float, target_speed: float) -> int:
    """The local steps a device of ``speed`` runs so that its training takes no longer than a device of
    ``target_speed`` running all ``steps`` (this project's rule; ``train.target-speed``).

    A synchronous round lasts as long as its slowest client; a device k times slower than the target runs
    floor(steps / k) steps, at least one. Devices at or above the target, and ``target_speed`` 0, keep
    ``steps``.
    """
    if target_speed <= 0 or speed >= target_speed:
        return steps
    # the epsilon keeps an exact ratio exact: 4 x 0.6 / 0.8 is 2.9999999999999996 in floats, not 3
    return max(1, math.floor(steps * speed / target_speed + 1e-9))


PROFILES: dict[str, DeviceProfile] = {
    "workstation": DeviceProfile("workstation", speed=1.0, memory_mb=24000, capacity=0.5),
    "cpu-box": DeviceProfile("cpu-box", speed=0.5, memory_mb=8000, capacity=0.34),
    "jetson-orin": DeviceProfile("jetson-orin", speed=0.25, memory_mb=4000, capacity=0.17),
}


def profile_names(spec: str) -> list[str]:
    """The profile names of a ``devices.profiles`` value; an unknown one is an error naming the known."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PROFILES))
    if unknown:
        raise ValueError(f"unknown profile(s) {unknown}; known: {sorted(PROFILES)}")
    return names


@dataclass(frozen=True)
class Calibration:
    """What a node measured at start-up on the run's model (``fedcore.training.calibrate``)."""

    #: one block's training throughput relative to this project's reference device (speed 1)
    speed: float
    #: free accelerator memory, else available system memory
    free_mb: float
    #: the model's parameters as the node holds them
    model_mb: float
    #: what training one more block costs: its saved activations at the run's batch and length, its
    #: trainable parameters' gradients and optimizer state
    block_mb: float

    def profile(self, node_config: dict[str, Any]) -> DeviceProfile:
        """The measured profile, with every value the node config states winning over its measurement."""
        memory_mb = _number(node_config, "memory-mb", self.free_mb, float)
        fits = max(1, math.floor((memory_mb - self.model_mb) / self.block_mb)) if self.block_mb > 0 else 0
        return DeviceProfile(
            name="measured",
            speed=_number(node_config, "speed", self.speed, float),
            memory_mb=memory_mb,
            capacity=_number(node_config, "capacity", DeviceProfile.capacity, float),
            max_blocks=_number(node_config, "max-blocks", 0, int),
            memory_blocks=fits,
        )


def profile_for(partition_id: int | None, spec: str, node_config: dict[str, Any]) -> DeviceProfile:
    """A node's own config wins; otherwise the run config's profile list, cycled over partitions.

    A node with its own data (``partition_id`` None) has no partition to cycle over: a workstation.
    """
    names = profile_names(spec)
    cycled = names[partition_id % len(names)] if names and partition_id is not None else "workstation"
    name = str(node_config.get("device", cycled))
    if name not in PROFILES:
        raise ValueError(f"node config device={name!r} is unknown; known: {sorted(PROFILES)}")
    base = PROFILES[name]
    return DeviceProfile(
        name=name,
        speed=_number(node_config, "speed", base.speed, float),
        memory_mb=_number(node_config, "memory-mb", base.memory_mb, float),
        capacity=_number(node_config, "capacity", base.capacity, float),
        max_blocks=_number(node_config, "max-blocks", base.max_blocks, int),
    )


def _number(node_config: dict[str, Any], key: str, default: float, kind: type) -> Any:
    """One profile value from the node config, as ``kind``; a value that is not one names its key."""
    value = node_config.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"node config {key}={value!r} is not a number") from None
