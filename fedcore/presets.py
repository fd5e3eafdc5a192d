"""Named run presets: tested bundles of settings selected with ``preset=<name>``.

Flower hands the app the run config already merged with pyproject's defaults, so the app cannot tell an
explicit override from a default. A preset therefore fills only keys that still hold their default value:
anything a user sets to a non-default value wins over the preset.
"""

from __future__ import annotations

from typing import Any

_SMOLLM2 = {
    "model.name": "embedded:smollm2-135m-instruct",
    "tuning.lora-targets": "q_proj,k_proj,v_proj,o_proj",
    "train.batch-size": 8,
    "eval.batch-size": 16,
}

PRESETS: dict[str, dict[str, Any]] = {
    # causal-LM fine-tuning of a 30-block decoder, one client per Austen novel
    "llm-austen": {
        **_SMOLLM2,
        "model.task": "causal-lm",
        "model.max-length": 128,
        "data.name": "embedded:austen",
        "data.partition": "natural",
        "data.natural-column": "book",
        "clients.num-partitions": 6,
        "train.local-steps": 10,
        "eval.max-examples": 64,
        "rounds": 3,
    },
    # instruction/chat pairs by topic, loss on the answers only
    "llm-chat": {
        **_SMOLLM2,
        "model.task": "causal-lm",
        "model.max-length": 128,
        "data.name": "embedded:chatterbot",
        "data.partition": "natural",
        "data.natural-column": "topic",
        "train.local-steps": 10,
        "eval.max-examples": 64,
        "rounds": 3,
    },
    # the methods' comparison testbed, of the papers' kind but sized for a CPU: the 30-block decoder as a
    # 5-topic news classifier (headline + first sentence), 8 clients under strong label skew, 4 sampled
    # per round on heterogeneous devices; hyperparameters are chosen on the server's validation split
    "paper-cls": {
        **_SMOLLM2,
        "model.max-length": 32,
        "data.name": "embedded:bbc-news",
        "data.dirichlet-alpha": 0.1,
        "data.validation-fraction": 0.05,
        "clients.num-partitions": 8,
        "clients.per-round": 4,
        # FedLoRA's accuracy flattens from about round 16; at 10 rounds every method was still rising
        # (docs/research/paper-cls-comparison.md)
        "rounds": 20,
        "train.local-steps": 5,
        "eval.max-examples": 100,
        "eval.batch-size": 32,
        "eval.client-examples": 32,
        "eval.local": True,
        "drop.probe-examples": 32,
        # chosen on the server validation split of this testbed (two seeds): the sensitivity arms had the
        # higher global validation accuracy (docs/research/paper-cls-comparison.md)
        "drop.shapes": "sensitivity",
        # DropPEFT chosen on the same split: one arm, 0.15, without personal layers had the best validation
        # accuracy of every DropPEFT measured (docs/research/droppeft-rate-and-bandit.md), so the testbed
        # runs DropPEFT as layer dropout at 0.15 alone (the paper's full method: droppeft-paper variant)
        "drop.rates": "0.15",
        "ptls.fraction": 0.0,
    },
    # the same 30-block model as a sentiment classifier: the deep testbed for layer dropout and windows
    "llm-classifier": {
        **_SMOLLM2,
        "model.max-length": 64,
        "train.local-steps": 10,
        "eval.max-examples": 200,
    },
}


def apply_preset(flat: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The flat config with the preset's values filled into keys still at their default."""
    name = flat.get("preset", "")
    if not name:
        return flat
    if name not in PRESETS:
        raise KeyError(name)
    merged = dict(flat)
    for key, value in PRESETS[name].items():
        if merged.get(key, defaults[key]) == defaults[key]:
            merged[key] = value
    return merged
