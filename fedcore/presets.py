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
        # FedLoRA's accuracy flattens from about round 16 (benchmarks/results/paper-testbed-P.md: 0.91 0.87
        # 0.90 0.89 0.89 over rounds 16-20, seed 0); at 10 rounds every method was still rising
        "rounds": 20,
        "train.local-steps": 5,
        "eval.max-examples": 100,
        "eval.batch-size": 32,
        "eval.client-examples": 32,
        "eval.local": True,
        "drop.probe-examples": 32,
        # chosen on the server validation split of this testbed (two seeds): the sensitivity arms'
        # global validation accuracy 0.448 / 0.365 against 0.396 / 0.365 with the incremental ones
        "drop.shapes": "sensitivity",
        # DropPEFT chosen on the same split (20 rounds, seeds 0 / 1; benchmarks/results/paper-testbed-I.md):
        # one arm, 0.15, without personal layers reached 0.802 / 0.719, against 0.583 / 0.385 for that arm
        # with personal layers and 0.448 / 0.354 for the bandit over 0.15 / 0.3 with them, so the testbed
        # runs DropPEFT as layer dropout at 0.15 alone (the paper's full method: droppeft-paper variant)
        "drop.rates": "0.15",
        "ptls.fraction": 0.0,
    },
    # the papers' own regime: a pretrained 12-block encoder (MPNet, 110M parameters) as the same 5-topic
    # news classifier, 8 clients under Dirichlet 0.1, 4 per round on the heterogeneous default devices; the
    # methods run at their papers' settings (DropPEFT's bandit over 0.15 / 0.3 with personal layers) until
    # this testbed's validation split chooses otherwise. The papers' longer local training is the override
    # train.local-steps=20 (benchmarks/experiments/paper-enc.toml)
    "paper-enc": {
        "model.name": "embedded:all-mpnet-base-v2",
        "model.max-length": 64,
        "data.name": "embedded:bbc-news",
        "data.dirichlet-alpha": 0.1,
        "data.validation-fraction": 0.05,
        "clients.num-partitions": 8,
        "clients.per-round": 4,
        "rounds": 20,
        "train.local-steps": 5,
        "train.batch-size": 8,
        "eval.max-examples": 100,
        "eval.batch-size": 32,
        "eval.client-examples": 32,
        "eval.local": True,
        "drop.probe-examples": 32,
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
