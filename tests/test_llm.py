"""The LLM workload on CI-sized inputs: chat rendering, prompt masking, perplexity, tied decoders, the
Austen and ChatterBot readers and built (converted) assets.

Nothing here downloads: the real SmolLM2 model, the Debian package and the ChatterBot wheel are replaced
by the tiny random Llama of conftest and small synthetic files in the same formats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from fedcore.config import DataConfig
from fedcore.core.layers import EMBED, HEAD, LayerMap
from fedcore.data import assets, tables
from fedcore.data.batching import make_batches
from fedcore.data.chat import format_chat
from fedcore.model import build_model, tunable_names
from fedcore.training.evaluate import evaluate
from tests.conftest import tiny_run_config

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
PAIRS = [
    ("is the film good", "yes it is great"),
    ("and the plot", "dull"),
    ("what about the acting in this movie", "the acting was the best part of it"),
]


@pytest.fixture
def tokenizer(tiny_models: dict[str, Path]) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_models["llama"])


@pytest.fixture(params=["fallback", "template"])
def chat_tokenizer(
    request: pytest.FixtureRequest, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedTokenizerBase:
    if request.param == "template":
        tokenizer.chat_template = TEMPLATE
    return tokenizer


def _chat_table(tokenizer: PreTrainedTokenizerBase, with_prompt: bool) -> datasets.Dataset:
    """The same rendered conversations, as a chat table (prompt masked) or as plain text."""
    columns: dict[str, list[str]] = {"text": [format_chat(tokenizer, p, r).text for p, r in PAIRS]}
    if with_prompt:
        columns |= {"prompt": [p for p, _ in PAIRS], "response": [r for _, r in PAIRS]}
    return datasets.Dataset.from_dict(columns)


def test_chat_fallback_layout(tokenizer: PreTrainedTokenizerBase) -> None:
    assert tokenizer.chat_template is None
    chat = format_chat(tokenizer, "hi there", "hello")
    assert chat.text == "User: hi there\nAssistant: hello"
    assert chat.prompt == "User: hi there\nAssistant: "
    assert format_chat(None, "hi there", "hello") == chat


def test_chat_template_layout(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.chat_template = TEMPLATE
    chat = format_chat(tokenizer, "hi there", "hello")
    assert chat.text == "<user>hi there</user><assistant>hello</assistant>"
    assert chat.prompt == "<user>hi there</user><assistant>"
    assert chat.text.startswith(chat.prompt)


def test_chat_template_without_a_matching_generation_prompt_is_refused(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }}.{% endfor %}{{ '>' }}"
    with pytest.raises(ValueError, match="generation prompt"):
        format_chat(tokenizer, "hi", "hello")


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_prompt_and_padding_tokens_are_masked(
    chat_tokenizer: PreTrainedTokenizerBase, padding_side: str
) -> None:
    """Labels differ from the plain-text batch exactly at the prompt tokens; answers keep their ids."""
    chat_tokenizer.padding_side = padding_side
    masked = make_batches(_chat_table(chat_tokenizer, True), chat_tokenizer, "causal-lm", 64, batch_size=3)[0]
    plain = make_batches(_chat_table(chat_tokenizer, False), chat_tokenizer, "causal-lm", 64, batch_size=3)[0]
    assert torch.equal(masked["input_ids"], plain["input_ids"])
    assert torch.equal(plain["labels"], plain["input_ids"].masked_fill(plain["attention_mask"] == 0, -100))
    for row, (prompt, response) in enumerate(PAIRS):
        chat = format_chat(chat_tokenizer, prompt, response)
        n_prompt = len(chat_tokenizer(chat.prompt, add_special_tokens=False)["input_ids"]) + 1  # + [CLS]
        n_text = len(chat_tokenizer(chat.text)["input_ids"])
        real = masked["attention_mask"][row].nonzero().flatten()
        assert len(real) == n_text
        labels, ids = masked["labels"][row], masked["input_ids"][row]
        assert (labels[real[:n_prompt]] == -100).all()
        assert torch.equal(labels[real[n_prompt:]], ids[real[n_prompt:]])
        assert (labels[masked["attention_mask"][row] == 0] == -100).all()
        differs = (masked["labels"][row] != plain["labels"][row]).nonzero().flatten()
        assert torch.equal(differs, real[:n_prompt])


def test_perplexity_is_exp_mean_nll_of_answer_tokens(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_run_config(tiny_models["llama"], tmp_path, method="fedavg", **{"model.task": "causal-lm"})
    model, tokenizer = build_model(cfg, num_labels=0)
    batches = make_batches(_chat_table(tokenizer, True), tokenizer, "causal-lm", 64, batch_size=2)
    result = evaluate(model, batches, "causal-lm")

    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            for row, col in (batch["labels"] != -100).nonzero().tolist():
                nll -= float(log_probs[row, col - 1, batch["labels"][row, col]])
                count += 1
    answer_tokens = sum(
        len(tokenizer(format_chat(tokenizer, p, r).text)["input_ids"])
        - len(tokenizer(format_chat(tokenizer, p, r).prompt, add_special_tokens=False)["input_ids"])
        - 1
        for p, r in PAIRS
    )
    assert count == answer_tokens
    assert math.isclose(result["loss"], nll / count, rel_tol=1e-5)
    assert math.isclose(result["perplexity"], math.exp(nll / count), rel_tol=1e-5)


def test_tied_decoder_groups_and_frozen_embedding(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Tiny Llama ties lm_head to the input embedding: one parameter, in "embed", never trained."""
    cfg = tiny_run_config(tiny_models["llama"], tmp_path, method="fedavg", **{"model.task": "causal-lm"})
    model, _ = build_model(cfg, num_labels=0)
    assert model.config.tie_word_embeddings
    names = dict(model.named_parameters())
    assert "lm_head.weight" not in names
    assert model.lm_head.weight is model.model.embed_tokens.weight
    layer_map = LayerMap(model)
    assert layer_map.group_of("model.embed_tokens.weight") == EMBED
    assert layer_map.group_of("model.norm.weight") == HEAD
    assert [n for n in names if layer_map.group_of(n) == HEAD] == ["model.norm.weight"]
    tunable = set(tunable_names(model))
    assert tunable == {n for n in names if n != "model.embed_tokens.weight"}
    assert not model.lm_head.weight.requires_grad


AUSTEN_LINES = [
    "CHAPTER 1",
    "",
    "one two three four five six seven eight nine ten",
    "eleven twelve",
    "",
    "",
    "a b c d e f g h",
    "i j k l m n o p",
    "q r s t u v w x",
    "",
    "last line",
]


def test_chunk_lines_keeps_words_in_order_within_bounds() -> None:
    chunks = tables.chunk_lines(AUSTEN_LINES, min_words=10, max_words=20)
    assert chunks == [
        "CHAPTER 1\none two three four five six seven eight nine ten eleven twelve",
        "a b c d e f g h i j k l m n o p",
        "q r s t u v w x\nlast line",
    ]
    assert tables.chunk_lines(AUSTEN_LINES, min_words=10, max_words=20) == chunks
    assert " ".join(" ".join(chunks).split()) == " ".join(" ".join(AUSTEN_LINES).split())


def _write_lazy_load_db(directory: Path, books: dict[str, list[str]]) -> None:
    """R's lazy-load database as janeaustenr ships it: an RDS index, zlib records with a size prefix."""
    rdata = pytest.importorskip("rdata")
    from rdata.conversion import convert_python_to_r_data
    from rdata.unparser import unparse_data

    blob, variables = b"", {}
    for name, lines in books.items():
        serialized = unparse_data(convert_python_to_r_data(np.array(lines)))
        record = len(serialized).to_bytes(4, "big") + zlib.compress(serialized)
        variables[name] = np.array([len(blob), len(record)], dtype=np.int32)
        blob += record
    (directory / "Rdata.rdb").write_bytes(blob)
    index = {"variables": variables, "references": {}, "compressed": np.array([True])}
    rdata.write_rds(directory / "Rdata.rdx", index)


def test_austen_lines_are_read_from_the_r_database(tmp_path: Path) -> None:
    books = {name: [f"{name} line {i}" if i % 3 else "" for i in range(7)] for name in assets._AUSTEN_BOOKS}
    _write_lazy_load_db(tmp_path, books)
    assets._austen_lines(tmp_path, tmp_path / "lines.parquet")
    lines = pd.read_parquet(tmp_path / "lines.parquet")
    assert list(lines.columns) == ["book", "line"]
    assert lines["book"].unique().tolist() == list(assets._AUSTEN_BOOKS.values())
    assert lines["line"].tolist() == [line for name in assets._AUSTEN_BOOKS for line in books[name]]


def test_embedded_austen_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "austen-lines.parquet"
    frame = pd.DataFrame({"book": ["Emma"] * len(AUSTEN_LINES), "line": AUSTEN_LINES})
    pd.concat([frame, frame.assign(book="Persuasion")]).to_parquet(path)
    monkeypatch.setattr(assets, "asset_path", lambda name: {"austen": path}[name])
    cfg = DataConfig(name="embedded:austen", partition="natural", natural_column="book")
    table = tables.load_dataset_table(cfg, "causal-lm", seed=0)
    assert table.column_names == ["text", "book"]
    assert table["book"] == ["Emma", "Persuasion"]  # 40 words: one chunk of each book
    assert table["text"] == [tables.chunk_lines(AUSTEN_LINES)[0]] * 2
    parts = [tables.partition(table, cfg, 2, i, seed=0) for i in range(2)]
    assert sorted(len(set(p["book"])) for p in parts) == [1, 1]
    with pytest.raises(tables.DataError, match="model.task=causal-lm"):
        tables.load_dataset_table(cfg, "seq-cls", seed=0)


def test_chatterbot_pairs_from_yaml(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "english"
    corpus.mkdir()
    (corpus / "food.yml").write_text(
        "categories:\n- food\nconversations:\n- - Do you eat\n  - No.\n  - Why not\n- - Do you eat\n  - No.\n"
    )
    (corpus / "ai.yml").write_text("categories:\n- AI\nconversations:\n- - What is 6 times 7\n  - 42\n")
    (corpus / "notes.txt").write_text("not a topic")
    frame = tables.chat_pairs(corpus)
    assert frame[["prompt", "response", "topic"]].values.tolist() == [
        ["What is 6 times 7", "42", "ai"],
        ["Do you eat", "No.", "food"],
        ["No.", "Why not", "food"],
    ]
    assert frame["text"].tolist()[0] == "User: What is 6 times 7\nAssistant: 42"

    monkeypatch.setattr(assets, "asset_path", lambda name: {"chatterbot": corpus}[name])
    cfg = DataConfig(name="embedded:chatterbot", partition="natural", natural_column="topic")
    table = tables.load_dataset_table(cfg, "causal-lm", seed=0)
    assert table.column_names == ["text", "prompt", "response", "topic"]
    assert table["text"] == frame["text"].tolist()
    batch = make_batches(table, tokenizer, "causal-lm", max_length=32, batch_size=8)[0]
    assert 0 < int((batch["labels"] != -100).sum()) < int(batch["attention_mask"].sum())


def test_save_dequantized_drops_the_quantizer(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """What a GGUF load leaves behind (a quantizer that refuses to save) is removed, weights kept."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"))
    model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(ValueError, match="quantized with gguf"):
        model.save_pretrained(tmp_path / "refused")
    assets.save_dequantized(model, tokenizer, tmp_path / "plain")
    assert "quantization_config" not in (tmp_path / "plain" / "config.json").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain", dtype=torch.float32)
    for (name, param), (_, again) in zip(model.named_parameters(), reloaded.named_parameters(), strict=True):
        assert torch.equal(param, again), name
    assert AutoTokenizer.from_pretrained(tmp_path / "plain").get_vocab() == tokenizer.get_vocab()


@pytest.fixture
def toy_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A built asset from a local wheel: its build upper-cases one member into a directory."""
    monkeypatch.setenv("FEDLAYER_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("toy/words.txt", "hello")
    calls = {"download": 0, "build": 0}

    def build(staged: Path, out: Path) -> None:
        calls["build"] += 1
        out.mkdir()
        (out / "WORDS.txt").write_text((staged / "words.txt").read_text().upper())
        if (staged / "words.txt").read_text() == "fail":
            raise RuntimeError("conversion failed")

    def download(requirements: list[str], into: Path, names: list[str]) -> assets._Package:
        calls["download"] += 1
        return assets._Package(wheel)

    toy = assets.Asset(
        requirement="toy==1.0",
        members={"toy/words.txt": "words.txt"},
        key="toy/words.txt",
        sha256=hashlib.sha256(b"hello").hexdigest(),
        path="models/toy",
        build=build,
        on_demand=True,
    )
    monkeypatch.setitem(assets.ASSETS, "toy", toy)
    monkeypatch.setattr(assets, "_download_wheel", download)
    return calls


def test_built_asset_is_converted_once_and_only_the_result_is_cached(
    toy_asset: dict[str, int], tmp_path: Path
) -> None:
    path = assets.asset_path("toy")
    assert path == tmp_path / "cache" / "models" / "toy"
    assert (path / "WORDS.txt").read_text() == "HELLO"
    cached = sorted(str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").rglob("*"))
    assert cached == ["models", "models/toy", "models/toy.verified", "models/toy/WORDS.txt"]
    assert assets.asset_path("toy") == path
    assert toy_asset == {"download": 1, "build": 1}

    (path / "old-format.bin").write_text("left by an earlier pin")
    (tmp_path / "cache" / "models" / "toy.verified").write_text("0" * 64 + "\n")
    assert assets.asset_path("toy") == path
    assert toy_asset == {"download": 2, "build": 2}
    assert [p.name for p in path.iterdir()] == ["WORDS.txt"]


def test_failed_build_leaves_nothing_behind(
    toy_asset: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("toy/words.txt", "fail")
    failing = dataclasses.replace(assets.ASSETS["toy"], sha256=hashlib.sha256(b"fail").hexdigest())
    monkeypatch.setitem(assets.ASSETS, "toy", failing)
    with pytest.raises(RuntimeError, match="conversion failed"):
        assets.asset_path("toy")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
