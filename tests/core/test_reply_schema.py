"""Every client-supplied value is checked against the declared schema before anything reads it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedcore.core import wire
from fedcore.core.devices import DeviceProfile, profile_for
from fedcore.core.reply_schema import SchemaError, check_node_info, check_train_metrics

GOOD_METRICS: dict[str, Any] = {
    wire.EXAMPLES: 120,
    wire.TRAIN_LOSS: 0.69,
    wire.STEPS: 2,
    wire.SAMPLES_PROCESSED: 16,
    wire.COMPUTE_TIME_S: 0.4,
    wire.DEVICE_TIME_S: 0.8,
    wire.WALL_TIME_S: 1.2,
    wire.PEAK_RSS_MB: 812.5,
    wire.PEAK_CUDA_MB: 0.0,
    wire.ACTIVATION_MB: 3.1,
    wire.MEAN_ACTIVE_BLOCKS: 3.5,
    wire.MODEL_BLOCKS: 4,
    wire.PERSONAL_BLOCKS: 0,
    wire.BYTES_DOWN: 4096,
    wire.BYTES_UP: 4096,
}
PROBES = {wire.PROBE_LOSS_BEFORE: 0.7, wire.PROBE_LOSS_AFTER: 0.68}


def test_an_honest_reply_passes_unchanged() -> None:
    assert check_train_metrics(GOOD_METRICS, probe=False) == GOOD_METRICS
    personal = {**GOOD_METRICS, **PROBES, wire.PERSONAL_ACCURACY: 0.5, "personal_loss": 0.7}
    assert check_train_metrics(personal, probe=True) == personal


BAD_METRICS: dict[str, tuple[dict[str, Any], bool, str]] = {
    "peak_rss_mb missing": (
        {k: v for k, v in GOOD_METRICS.items() if k != wire.PEAK_RSS_MB},
        False,
        "missing",
    ),
    "peak_rss_mb a list": (
        {**GOOD_METRICS, wire.PEAK_RSS_MB: [1.0, 2.0]},
        False,
        "peak_rss_mb: expected a number",
    ),
    "1e15 MB": ({**GOOD_METRICS, wire.PEAK_RSS_MB: 1e15}, False, "peak_rss_mb: 1e\\+15 outside"),
    "examples a float": ({**GOOD_METRICS, wire.EXAMPLES: 120.5}, False, "examples: expected an integer"),
    "examples absurd": ({**GOOD_METRICS, wire.EXAMPLES: 10**12}, False, "examples: .* outside"),
    "examples zero": ({**GOOD_METRICS, wire.EXAMPLES: 0}, False, "examples: 0 outside"),
    "device time zero": ({**GOOD_METRICS, wire.DEVICE_TIME_S: 0.0}, False, "device_time_s: 0 outside \\(0"),
    "nan loss": ({**GOOD_METRICS, wire.TRAIN_LOSS: math.nan}, False, "train_loss: not finite"),
    "nan probe": ({**GOOD_METRICS, **PROBES, wire.PROBE_LOSS_BEFORE: math.nan}, True, "probe_loss_before"),
    "probe after missing": ({**GOOD_METRICS, wire.PROBE_LOSS_BEFORE: 0.7}, True, "missing.*probe_loss_after"),
    "probe not planned": ({**GOOD_METRICS, **PROBES}, False, "unknown.*probe_loss"),
    "server-owned key": ({**GOOD_METRICS, "partition_id": 3}, False, "unknown.*partition_id"),
    "bool": ({**GOOD_METRICS, wire.STEPS: True}, False, "steps: expected an integer"),
}


@pytest.mark.parametrize("case", list(BAD_METRICS))
def test_a_bad_metric_is_refused_naming_the_key(case: str) -> None:
    metrics, probe, cause = BAD_METRICS[case]
    with pytest.raises(SchemaError, match=cause):
        check_train_metrics(metrics, probe=probe)


GOOD_INFO: dict[str, Any] = {
    wire.NODE_PARTITION_ID: 1,
    wire.NODE_NUM_PARTITIONS: 4,
    wire.NODE_NUM_EXAMPLES: 60,
    **DeviceProfile("workstation").as_config(),
}


def test_node_info_keeps_only_declared_keys() -> None:
    assert check_node_info({**GOOD_INFO, "some-operator-key": "x"}) == GOOD_INFO


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"device-name": None}, "missing.*device-name"),
        ({wire.NODE_NUM_EXAMPLES: "lots"}, "num-examples: expected an integer"),
        ({"device-speed": math.inf}, "device-speed: not finite"),
        ({"device-speed": 0.0}, "device-speed: 0 outside"),
        ({"device-capacity": math.nan}, "device-capacity: not finite"),
        ({"device-capacity": 2.0}, "device-capacity: 2 outside"),
        ({"device-max-blocks": -1}, "device-max-blocks"),
    ],
)
def test_a_bad_node_statement_is_refused_naming_the_key(change: dict[str, Any], cause: str) -> None:
    info = {k: v for k, v in {**GOOD_INFO, **change}.items() if v is not None}
    with pytest.raises(SchemaError, match=cause):
        check_node_info(info)


@pytest.mark.parametrize(
    ("node_config", "cause"),
    [
        ({"speed": "inf"}, "speed=inf must be"),
        ({"speed": 0}, "speed=0.0 must be"),
        ({"capacity": "nan"}, "capacity=nan must be"),
        ({"memory-mb": "lots"}, "memory-mb='lots' is not a number"),
        ({"max-blocks": -2}, "max-blocks=-2"),
    ],
)
def test_a_node_config_no_device_has_is_refused_naming_the_key(
    node_config: dict[str, Any], cause: str
) -> None:
    with pytest.raises(ValueError, match=cause):
        profile_for(0, "", node_config)
