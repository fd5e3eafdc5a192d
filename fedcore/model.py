"""Load any Hugging Face transformer and attach the tuning a run asks for (full, LoRA, BitFit).

The same function builds the model on the server and on every client, so parameter names (the keys of
everything sent over the wire) agree everywhere. Which parameters a tuning mode trains is recorded as the
model's *tunable* set; the client may freeze part of it further per round (that is the plan's business).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from fedcore import known_warnings
from fedcore.config import ModelConfig, RunConfig, TuningConfig
from fedcore.core.layers import EMBED, HEAD, LayerMap
from fedcore.data import assets

_TUNABLE_ATTR = "fedlayer_tunable"

# Every client loads the model each round: per-load reports ("classifier newly initialised", progress
# bars) would drown the federation's own output. Errors still surface as exceptions.
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()
known_warnings.silence()


#: LoRA targets per architecture when tuning.lora-targets is empty: every attention projection and the
#: dense layers (this project's default; peft's own default adapts only query and value, which learns
#: markedly slower on the embedded task). Other architectures fall back to peft's default.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "mpnet": ["q", "k", "v", "o", "dense"],
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


class ModelLoadError(ValueError):
    """The configured model cannot be loaded; the message names model.name and the fix."""


def model_location(cfg: ModelConfig) -> str:
    """A local directory for embedded/local models, else the hub id unchanged."""
    return str(assets.resolve(cfg.name))


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    location = model_location(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name: cannot load a tokenizer from '{cfg.name}': {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_base_model(cfg: ModelConfig, num_labels: int, pad_token_id: int | None) -> nn.Module:
    """Load pretrained weights in fp32; the classification head (if new) is seeded by the caller."""
    location = model_location(cfg)
    try:
        if cfg.task == "seq-cls":
            model = AutoModelForSequenceClassification.from_pretrained(
                location, num_labels=num_labels, dtype=torch.float32
            )
            if model.config.pad_token_id is None:
                model.config.pad_token_id = pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name: cannot load '{cfg.name}' ({location}): {exc}") from None
    return model


def apply_tuning(model: nn.Module, mode: str, tuning: TuningConfig, task: str) -> nn.Module:
    """Freeze everything, then mark (and for LoRA, inject) the parameters this tuning mode trains."""
    for param in model.parameters():
        param.requires_grad_(False)
    if mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model  # ~1.7 s to import: only LoRA runs pay it

        targets = [t.strip() for t in tuning.lora_targets.split(",") if t.strip()]
        targets = targets or DEFAULT_LORA_TARGETS.get(getattr(model.config, "model_type", ""))
        lora = LoraConfig(
            r=tuning.lora_r,
            lora_alpha=tuning.lora_alpha,
            lora_dropout=tuning.lora_dropout,
            target_modules=targets,
            task_type=TaskType.SEQ_CLS if task == "seq-cls" else TaskType.CAUSAL_LM,
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise ModelLoadError(f"tuning.lora-targets: {exc}") from None
        tunable = [n for n, p in model.named_parameters() if p.requires_grad]
    elif mode == "bitfit" and tuning.bitfit_set == "biases":
        # the LEFF paper's FedBitFit (its Table 5 counts): every bias, the embeddings' norm included, and no
        # weight at all, so a classifier's head weights stay as initialised
        tunable = [name for name, _ in model.named_parameters() if name.endswith(".bias")]
    else:
        layer_map = LayerMap(model)
        tunable = []
        for name, _ in model.named_parameters():
            group = layer_map.group_of(name)
            if group == EMBED:
                continue
            if mode == "full" or name.endswith(".bias") or (group == HEAD and task == "seq-cls"):
                tunable.append(name)
    if mode == "bitfit" and not any(n.endswith(".bias") for n in tunable):
        raise ModelLoadError(
            f"tuning.mode=bitfit: {type(model).__name__} has no bias parameters; use lora or full"
        )
    set_tunable(model, tunable)
    return model


@contextmanager
def training_state_kept(model: nn.Module) -> Iterator[None]:
    """Code inside may switch train/eval modes and requires_grad flags; both are as found afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.train(mode)


def set_tunable(model: nn.Module, names: list[str]) -> None:
    """Record the tunable parameter set and make exactly those require gradients."""
    wanted = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
    setattr(model, _TUNABLE_ATTR, sorted(wanted))


def tunable_names(model: nn.Module) -> list[str]:
    return list(getattr(model, _TUNABLE_ATTR))


def tunable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the tunable parameters: the model's federated state."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().clone() for name in tunable_names(model)}


def load_tunable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Overwrite tunable parameters in place; unknown names or shapes are an error, not a silent skip."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            if name not in params:
                raise KeyError(f"parameter '{name}' does not exist in this model")
            if params[name].shape != value.shape:
                raise ValueError(
                    f"parameter '{name}': shape {tuple(value.shape)} != {tuple(params[name].shape)}"
                )
            params[name].copy_(value.to(params[name].dtype))


def build_model(cfg: RunConfig, num_labels: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Tokenizer + tuned model, with any freshly initialised weights drawn from the run seed."""
    tokenizer = load_tokenizer(cfg.model)
    torch.manual_seed(cfg.seed)
    model = load_base_model(cfg.model, num_labels, tokenizer.pad_token_id)
    model = apply_tuning(model, cfg.tuning_mode, cfg.tuning, cfg.model.task)
    return model, tokenizer
