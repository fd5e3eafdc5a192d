"""The one bridge between fedcore's plain Python/torch values and Flower's records.

Tensors travel as fp32 or fp16 (Flower's ArrayRecord rejects bfloat16); plans and configs as
ConfigRecords of scalars and typed lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord

WIRE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def state_to_arrays(state: Mapping[str, torch.Tensor], wire_dtype: str = "float32") -> ArrayRecord:
    """Tensors in the wire precision; a value fp16 cannot hold is refused rather than sent as inf."""
    dtype = WIRE_DTYPES[wire_dtype]
    arrays = {}
    for name, tensor in state.items():
        wire = tensor.detach().to("cpu", dtype).contiguous()
        if dtype != tensor.dtype and not torch.isfinite(wire).all() and torch.isfinite(tensor).all():
            raise ValueError(f"{name}: values exceed the range of {wire_dtype}; use round.wire-dtype=float32")
        arrays[name] = wire
    return ArrayRecord(arrays)


def arrays_to_state(record: ArrayRecord, *, release: bool = False) -> dict[str, torch.Tensor]:
    """Tensors back in fp32, whatever precision they travelled in.

    ``release`` empties the record while converting, so the serialised copy of each tensor is freed as soon
    as its tensor exists instead of both living until the round ends (the payload is then held once).
    """
    return {name: t.float() for name, t in record.to_torch_state_dict(keep_input=not release).items()}


def dict_to_config(values: Mapping[str, Any]) -> ConfigRecord:
    return ConfigRecord(dict(values))


def config_to_dict(record: ConfigRecord) -> dict[str, Any]:
    return dict(record.items())
