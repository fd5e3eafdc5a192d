"""Shared fixtures: tiny random transformers (built from configs, no download) and small run configs."""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from transformers import BertTokenizer

from fedcore.cli.launch import flower_env
from fedcore.config import RunConfig
from tests.deployment_helpers import Daemons

_WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "not",
    "no",
    "is",
    "was",
    "are",
    "be",
    "this",
    "that",
    "it",
    "of",
    "to",
    "in",
    "on",
    "for",
    "with",
    "as",
    "by",
    "at",
    "from",
    "good",
    "bad",
    "great",
    "awful",
    "film",
    "movie",
    "story",
    "acting",
    "plot",
    "fun",
    "boring",
    "best",
    "worst",
    "love",
    "hate",
    "funny",
    "dull",
    "fresh",
    "rotten",
]

# Tiny models run far faster on one thread than on two contended ones (Ray actors set their own).
torch.set_num_threads(1)

ARCHITECTURES = ["bert", "roberta", "deberta-v2", "mpnet", "gpt2", "llama", "qwen2"]


def tiny_config(arch: str, vocab_size: int, layers: int = 4) -> transformers.PretrainedConfig:
    common = {"vocab_size": vocab_size, "pad_token_id": 0}
    if arch == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=layers, n_head=2, n_positions=128, **common)
    if arch in ("llama", "qwen2"):
        cls = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
        return cls(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            **common,
        )
    cls = {
        "bert": transformers.BertConfig,
        "roberta": transformers.RobertaConfig,
        "deberta-v2": transformers.DebertaV2Config,
        "mpnet": transformers.MPNetConfig,
    }[arch]
    return cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=130,
        **common,
    )


def write_tokenizer(directory: Path) -> BertTokenizer:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *string.ascii_lowercase]
    tokens += [f"##{c}" for c in string.ascii_lowercase] + list(string.punctuation) + list(string.digits)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_tiny_model_dir(directory: Path, arch: str, layers: int = 4) -> Path:
    """A saved random model + tokenizer that AutoModel*/AutoTokenizer load like a real checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(directory)
    torch.manual_seed(0)
    config = tiny_config(arch, len(tokenizer), layers)
    model = (
        transformers.AutoModelForCausalLM.from_config(config)
        if arch in ("gpt2", "llama", "qwen2")
        else (transformers.AutoModel.from_config(config))
    )
    model.save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def personal_layers_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients store personal layers under $XDG_DATA_HOME: keep each test's apart and off the home dir."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_tiny_model_dir(root / arch, arch) for arch in ARCHITECTURES}


def tiny_run_config(model_dir: Path, output_dir: Path, **overrides: object) -> RunConfig:
    """A run small enough for a CI test: ~300 examples, 2 local steps, 64 eval examples."""
    flat: dict[str, object] = {
        "model.name": str(model_dir),
        "model.max-length": 32,
        "data.max-examples": 300,
        "data.partition": "iid",
        "train.local-steps": 2,
        "train.batch-size": 8,
        "eval.max-examples": 64,
        "tuning.lora-r": 4,
        "rounds": 2,
        "output.dir": str(output_dir),
    }
    flat.update(overrides)
    return RunConfig.from_flat(flat)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Real Flower daemons a test starts, with a Flower home of its own; none outlives the test."""
    started = Daemons(tmp_path / "logs", flower_env(tmp_path / "flwr-home"))
    try:
        yield started
    finally:
        started.stop()
