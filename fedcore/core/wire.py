"""What crosses the wire between the ServerApp and the ClientApps: record names, the keys of a client's
reports, and the one bridge between fedcore's plain Python/torch values and Flower's records.

Tensors travel as fp32 or fp16 (Flower's ArrayRecord rejects bfloat16); plans and configs as
ConfigRecords of scalars and typed lists. Both sides, the planners, the console and the report name a
reported value only through the constants below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord

if TYPE_CHECKING:  # torch is imported where tensors are converted: the info query never needs it
    import torch

#: server -> client, train message
PLAN = "plan"  # ConfigRecord: the LayerPlan
RUN_CONFIG = "run-config"  # ConfigRecord: the flat run config
GLOBAL = "global"  # ArrayRecord: current global values of the parameters the client needs
RUN = "run"  # ConfigRecord: the run's identity, which a resume keeps (personal layers are stored by it)
RUN_NAME = "name"  # in RUN: the run's identity (its run directory's name and a random suffix)
#: in RUN (train message and info query): whether the federation is simulated, where device profiles are
#: cycled over partitions and device time is scaled by speed; absent = simulated
SIMULATED = "simulated"

#: client -> server, train reply
UPDATE = "update"  # ArrayRecord: new minus old, for every uploaded parameter
TRAIN_METRICS = "train-metrics"  # MetricRecord: examples, loss, times, memory, bytes
TRAIN_REPORT = "train-report"  # ConfigRecord: non-numeric facts (personal groups kept...)

#: query "info": the client describes itself
INFO_QUERY = "info"
NODE_INFO = "node-info"  # ConfigRecord: partition-id, num-partitions, device profile

#: node config keys a SuperNode may set (--node-config); simulation sets the first two itself
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
#: info reply only: the client's training examples (bounds its aggregation weight)
NODE_NUM_EXAMPLES = "num-examples"

#: train reply, TRAIN_METRICS: what a client reports per round (the server's client rows keep these keys)
EXAMPLES = "examples"  # training examples on the client: the aggregation weight
TRAIN_LOSS = "train_loss"  # mean training loss of the round
STEPS = "steps"
SAMPLES_PROCESSED = "samples_processed"
COMPUTE_TIME_S = "compute_time_s"  # measured time of the training loop
DEVICE_TIME_S = "device_time_s"  # compute time; in simulation scaled by the device profile's speed
WALL_TIME_S = "wall_time_s"  # the whole client round
PEAK_RSS_MB = "peak_rss_mb"
PEAK_CUDA_MB = "peak_cuda_mb"
ACTIVATION_MB = "activation_mb"  # bytes one forward pass keeps for backward
MEAN_ACTIVE_BLOCKS = "mean_active_blocks"  # blocks run per step under layer dropout
MODEL_BLOCKS = "model_blocks"  # blocks in the client's model (fewer under LEFF)
PERSONAL_BLOCKS = "personal_blocks"  # blocks kept personal this round
BYTES_DOWN = "bytes_down"
BYTES_UP = "bytes_up"
PROBE_LOSS_BEFORE = "probe_loss_before"  # held-out local loss before training (bandit reward)
PROBE_LOSS_AFTER = "probe_loss_after"
PERSONAL_PREFIX = "personal_"  # + an evaluate() key: the personalised model on local held-out data
PERSONAL_ACCURACY = PERSONAL_PREFIX + "accuracy"

#: train reply, TRAIN_REPORT: non-numeric facts
REPORT_DEVICE = "device"  # the device profile's name
REPORT_PERSONAL_GROUPS = "personal-groups"  # groups the client holds personal values of


def wire_dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a ``round.wire-dtype`` name."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16}[name]


def state_to_arrays(state: Mapping[str, torch.Tensor], wire_dtype: str = "float32") -> ArrayRecord:
    """Tensors in the wire precision; a value fp16 cannot hold is refused rather than sent as inf.

    A tensor already in float16 travels as it is: the sender chose that precision for it (LEFF's frozen
    blocks under ``leff.stand-in='bfloat16'``), and widening it would only double its bytes.
    """
    import torch

    dtype = wire_dtype_of(wire_dtype)
    arrays = {}
    for name, tensor in state.items():
        target = torch.float16 if tensor.dtype == torch.float16 else dtype
        wire = tensor.detach().to("cpu", target).contiguous()
        if target != tensor.dtype and not torch.isfinite(wire).all() and torch.isfinite(tensor).all():
            raise ValueError(f"{name}: values exceed the range of {wire_dtype}; use round.wire-dtype=float32")
        arrays[name] = wire
    return ArrayRecord(arrays)


def received_state(record: ArrayRecord, *, release: bool = False) -> dict[str, torch.Tensor]:
    """Tensors exactly as they travelled, dtype included (the receiver converts where it needs to).

    ``release`` empties the record while converting, so the serialised copy of each tensor is freed as soon
    as its tensor exists instead of both living until the round ends (the payload is then held once).
    """
    return dict(record.to_torch_state_dict(keep_input=not release))


def dict_to_config(values: Mapping[str, Any]) -> ConfigRecord:
    return ConfigRecord(dict(values))


def config_to_dict(record: ConfigRecord) -> dict[str, Any]:
    return dict(record.items())
