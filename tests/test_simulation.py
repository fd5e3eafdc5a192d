"""End to end through Flower's Ray simulation engine with tiny models and the embedded data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from tests.conftest import make_tiny_model_dir, tiny_run_config
from tests.simulate import simulate


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_run(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora-run")
    return simulate(tiny_run_config(tiny_models["bert"], out, method="fedlora"), supernodes=3)


def test_every_client_and_round_is_recorded(lora_run: Path) -> None:
    log = rows(lora_run)
    clients = [r for r in log if r["kind"] == "client"]
    assert sorted((r["round"], r["partition_id"]) for r in clients) == [
        (r, p) for r in (1, 2) for p in range(3)
    ]
    assert all(r["status"] == "ok" and r["examples"] > 0 and r["bytes_up"] > 0 for r in clients)
    assert all(r["peak_rss_mb"] > 0 and r["compute_time_s"] > 0 for r in clients)
    assert [r["round"] for r in log if r["kind"] == "global"] == [0, 1, 2]
    summary = json.loads((lora_run / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert json.loads((lora_run / "config.json").read_text())["method"] == "fedlora"


def test_saved_adapter_reloads_with_peft_and_was_trained(
    lora_run: Path, tiny_models: dict[str, Path]
) -> None:
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    model = PeftModel.from_pretrained(base, lora_run / "model")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b, "adapter has no LoRA weights"
    # LoRA B starts at zero: non-zero values prove the federated rounds trained and aggregated them
    assert any(p.abs().sum() > 0 for p in lora_b)
    # the saved model travels: label names, the base by its directory name, a card with the final metrics
    config = json.loads((lora_run / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "rotten", "1": "fresh"}
    adapter = json.loads((lora_run / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == tiny_models["bert"].name
    final = json.loads((lora_run / "summary.json").read_text())["final"]
    card = (lora_run / "model" / "README.md").read_text()
    assert "**fedlora**" in card and f"- accuracy: {final['accuracy']:.4f}" in card


def test_full_tuning_changes_blocks_and_keeps_embeddings(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = simulate(tiny_run_config(tiny_models["bert"], tmp_path, method="fedavg"), supernodes=2)
    before = load_file(tiny_models["bert"] / "model.safetensors")
    after = load_file(run_dir / "model" / "model.safetensors")
    after = {k.removeprefix("bert."): v for k, v in after.items()}  # the checkpoint is a bare BertModel
    embeddings = [k for k in before if k.startswith("embeddings.")]
    blocks = [k for k in before if k.startswith("encoder.layer.")]
    assert embeddings and blocks
    assert all(torch.equal(before[k], after[k]) for k in embeddings)
    assert all(not torch.equal(before[k], after[k]) for k in blocks)


def test_leff_with_heterogeneous_capacities(tmp_path: Path) -> None:
    """Two device classes train windows of different widths; only trained blocks change globally."""
    model_dir = make_tiny_model_dir(tmp_path / "bert8", "bert", layers=8)
    cfg = tiny_run_config(
        model_dir,
        tmp_path / "out",
        method="leff",
        **{
            "devices.profiles": "jetson-orin,workstation",
            "leff.stand-in": "students",
            "leff.distill-steps": 2,
            "rounds": 2,
        },
    )
    run_dir = simulate(cfg, supernodes=2)
    log = rows(run_dir)
    clients = [r for r in log if r["kind"] == "client"]
    assert all(r["status"] == "ok" for r in clients) and len(clients) == 4
    windows = [r["planner"]["windows"] for r in log if r["kind"] == "global" and r["round"] > 0]
    widths = {client: width for round_windows in windows for client, (_, width) in round_windows.items()}
    assert widths == {"client-0": 1, "client-1": 4}  # capacities 0.17 and 0.5 of 8 blocks
    held = {r["partition_id"]: r["model_blocks"] for r in clients}
    assert held[0] < 8 and held[1] < 8, "LEFF clients hold fewer blocks than the global model"
    assert all(
        r["planner"]["cache_hit_rate"] is not None for r in log if r["kind"] == "global" and r["round"]
    )


def test_causal_lm_perplexity_falls_and_samples_are_saved(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A decoder fine-tuned federatedly on a local text file: perplexity drops, samples are written."""
    texts = [f"the film was {w} and the story was {w} too" for w in ("good", "bad", "fun", "dull") * 30]
    data_file = tmp_path / "texts.jsonl"
    data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = tiny_run_config(
        tiny_models["llama"],
        tmp_path / "out",
        method="fedavg",
        **{"model.task": "causal-lm", "data.name": str(data_file), "train.lr": 0.01, "train.local-steps": 5},
    )
    run_dir = simulate(cfg, supernodes=2)
    perplexity = [r["perplexity"] for r in rows(run_dir) if r["kind"] == "global"]
    assert len(perplexity) == 3 and perplexity[0] > perplexity[1] > perplexity[2]
    samples = json.loads((run_dir / "samples.json").read_text())
    assert len(samples) == 3 and all(s["prompt"] and isinstance(s["continuation"], str) for s in samples)


def test_finished_run_writes_its_plots_and_report(lora_run: Path) -> None:
    plots = ["accuracy_vs_round", "accuracy_vs_time", "client_memory", "bytes_per_client", "clients"]
    for name in plots:
        assert (lora_run / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name
    report = (lora_run / "report.md").read_text()
    assert report.startswith(f"# Run {lora_run.name}\n") and "method `fedlora`" in report
    rounds = report.split("## Rounds\n")[1].split("## Plots")[0]
    assert [line.split("|")[1].strip() for line in rounds.strip().splitlines()[2:]] == ["0", "1", "2"]
    assert all(f"]({name}.png)" in report for name in plots)
    assert report.rstrip().endswith("## Replies not aggregated\n\nnone")
