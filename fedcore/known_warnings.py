"""Third-party deprecation warnings a default run triggers but cannot act on, silenced one by one.

Each entry names the warning's category, the module that issues it and how its message starts, so any
other warning (from the same library included) still shows. The list is installed in this process by
``silence()`` and passed to child processes (Flower's simulation process, where Ray starts, and its Ray
workers) as ``PYTHONWARNINGS`` entries by ``as_pythonwarnings()``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownWarning:
    category: type[Warning]
    module: str
    #: the message's start; no ':' (PYTHONWARNINGS separates its fields with ':')
    message_start: str

    def option(self) -> str:
        return f"ignore:{self.message_start}:{self.category.__name__}:{self.module}"


KNOWN: tuple[KnownWarning, ...] = (
    # peft reads the deprecated property in get_peft_model: once per model load, every client, every round
    KnownWarning(FutureWarning, "transformers.modeling_utils", "`is_gradient_checkpointing` is deprecated"),
    # "Tip: In future versions of Ray, Ray will no longer override accelerator visible devices env var...",
    # at every ray.init: a notice about a future default, and the current default is the one this app wants
    KnownWarning(FutureWarning, "ray._private.worker", "Tip"),
)


def silence() -> None:
    """Ignore exactly the known warnings in this process."""
    for known in KNOWN:
        warnings.filterwarnings(
            "ignore",
            message=re.escape(known.message_start),
            category=known.category,
            module=re.escape(known.module) + r"\Z",
        )


def as_pythonwarnings(existing: str = "") -> str:
    """A PYTHONWARNINGS value: the user's own entries, then the known warnings (later entries win)."""
    return ",".join([*filter(None, [existing]), *(known.option() for known in KNOWN)])
