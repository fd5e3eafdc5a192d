"""One run seed derives every random choice, so a run is reproducible end to end."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from the run seed and any identifying integers (round, partition...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)
