"""The saved model loads on another machine: no server paths, label names, and a card whose code works."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest
import torch

from fedcore.model import build_model
from server_app.model_export import base_reference, make_portable, model_card, save_portable
from server_app.run_log import RunLog, new_run_dir
from tests.conftest import make_tiny_model_dir, tiny_run_config

LABELS = ["rotten", "fresh"]
FINAL = {"kind": "global", "round": 2, "accuracy": 0.8125, "macro_f1": 0.79, "loss": 0.41}


def _card_code(card: str, folder: Path) -> str:
    """The card's Python block, pointed at ``folder``."""
    block = re.search(r"```python\n(.*?)```", card, re.S)
    assert block, card
    return block.group(1).replace("path/to/model", str(folder))


@pytest.mark.parametrize("method", ["fedlora", "fedbitfit"])
def test_saved_model_loads_elsewhere_and_predicts_label_names(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_base = make_tiny_model_dir(tmp_path / "server-cache" / "tiny-bert", "bert")
    cfg = tiny_run_config(server_base, tmp_path / "outputs", method=method)
    model, tokenizer = build_model(cfg, num_labels=len(LABELS))
    with torch.no_grad():  # a trained head: the loaded model must reproduce it, not a fresh one
        for name, param in model.named_parameters():
            if "classifier" in name:
                param.add_(torch.randn_like(param))
    model.eval()
    batch = tokenizer(["an example text"], return_tensors="pt")
    with torch.no_grad():
        expected_logits = model(**batch).logits
    reference = base_reference(cfg.model.name)
    make_portable(model, reference, LABELS)
    log = RunLog(new_run_dir(cfg.output.dir, cfg.method), cfg.to_flat())
    saved = log.save_model(model, tokenizer, model_card(cfg, reference, LABELS, FINAL))
    log.close()

    for file in saved.iterdir():
        if file.suffix in (".json", ".md"):
            assert str(tmp_path) not in file.read_text(), f"{file.name} names a path on the server"

    # another machine: the base under its reference name in the working directory, no server cache
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(server_base, elsewhere / reference)
    shutil.rmtree(tmp_path / "server-cache")
    monkeypatch.chdir(elsewhere)
    printed, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(_card_code((saved / "README.md").read_text(), saved), namespace)
    assert printed.getvalue().strip() == LABELS[int(expected_logits.argmax(-1))]
    loaded = namespace["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected_logits)


def test_causal_lm_adapter_loads_elsewhere_with_the_cards_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_base = make_tiny_model_dir(tmp_path / "server-cache" / "tiny-gpt2", "gpt2")
    cfg = tiny_run_config(server_base, tmp_path / "outputs", **{"model.task": "causal-lm"})
    model, tokenizer = build_model(cfg, num_labels=0)
    with torch.no_grad():  # a trained adapter: LoRA B leaves zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param))
    model.eval()
    batch = tokenizer(["an example text"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
    make_portable(model, base_reference(cfg.model.name), [])
    log = RunLog(new_run_dir(cfg.output.dir, cfg.method), cfg.to_flat())
    saved = log.save_model(model, tokenizer, model_card(cfg, "tiny-gpt2", [], FINAL))
    log.close()
    shutil.copytree(server_base, tmp_path / "elsewhere" / "tiny-gpt2")
    shutil.rmtree(tmp_path / "server-cache")
    monkeypatch.chdir(tmp_path / "elsewhere")
    namespace: dict[str, object] = {}
    exec(_card_code((saved / "README.md").read_text(), saved), namespace)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"].eval()(**batch).logits, expected)


def test_adapter_folder_carries_label_names_in_its_config(tmp_path: Path) -> None:
    base = make_tiny_model_dir(tmp_path / "tiny-bert", "bert")
    cfg = tiny_run_config(base, tmp_path / "outputs", method="fedlora")
    model, tokenizer = build_model(cfg, num_labels=2)
    make_portable(model, "tiny-bert", LABELS)
    log = RunLog(new_run_dir(cfg.output.dir, cfg.method), cfg.to_flat())
    saved = log.save_model(model, tokenizer, "card")
    log.close()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(saved)
    assert config.id2label == {0: "rotten", 1: "fresh"} and config.label2id == {"rotten": 0, "fresh": 1}
    assert '"base_model_name_or_path": "tiny-bert"' in (saved / "adapter_config.json").read_text()


def test_base_reference_is_resolvable_without_the_servers_files(tmp_path: Path) -> None:
    assert base_reference("embedded:all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_reference("embedded:smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_reference("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    (tmp_path / "my-bert").mkdir()
    assert base_reference(str(tmp_path / "my-bert")) == "my-bert"


def test_model_card_reports_method_data_rounds_and_final_metrics(tmp_path: Path) -> None:
    cfg = tiny_run_config(
        tmp_path, tmp_path / "outputs", method="fedlora", **{"model.name": "embedded:all-MiniLM-L6-v2"}
    )
    card = model_card(cfg, "sentence-transformers/all-MiniLM-L6-v2", LABELS, FINAL)
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "**fedlora**" in card and "`embedded:rotten-tomatoes`" in card
    assert "| rounds | 2 of 2 |" in card and "0: rotten, 1: fresh" in card
    assert "- accuracy: 0.8125" in card and "- macro_f1: 0.7900" in card
    assert "AutoPeftModelForSequenceClassification" in card
    assert "python -m fedcore.data.assets fetch all-MiniLM-L6-v2" in card


def test_a_round_model_loads_elsewhere_and_its_card_names_its_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_base = make_tiny_model_dir(tmp_path / "server-cache" / "tiny-bert", "bert")
    cfg = tiny_run_config(
        server_base, tmp_path / "outputs", method="fedlora", rounds=4, **{"output.save-every": 2}
    )
    model, tokenizer = build_model(cfg, num_labels=len(LABELS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                param.add_(torch.randn_like(param))
    model.eval()
    batch = tokenizer(["an example text"], return_tensors="pt")
    with torch.no_grad():
        expected_logits = model(**batch).logits
    log = RunLog(new_run_dir(cfg.output.dir, cfg.method), cfg.to_flat())
    saved = save_portable(log, model, tokenizer, cfg, LABELS, FINAL, "model-round-0002")
    log.close()
    assert saved == log.dir / "model-round-0002" and not (log.dir / "model").exists()

    card = (saved / "README.md").read_text()
    assert "# fedlora fine-tune of tiny-bert, round 2 of 4" in card
    assert "after round 2 of 4" in card and "`output.save-every=2`" in card
    assert "| rounds | 2 of 4 |" in card and "## Metrics after round 2" in card
    assert "- accuracy: 0.8125" in card and "Final metrics" not in card

    shutil.copytree(server_base, tmp_path / "elsewhere" / "tiny-bert")
    shutil.rmtree(tmp_path / "server-cache")
    monkeypatch.chdir(tmp_path / "elsewhere")
    printed, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(_card_code(card, saved), namespace)
    assert printed.getvalue().strip() == LABELS[int(expected_logits.argmax(-1))]
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"].eval()(**batch).logits, expected_logits)
