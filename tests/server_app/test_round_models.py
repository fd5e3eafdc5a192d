"""output.save-every: fedlayer's own loop saves the global model of every N-th round, each loadable and
scoring what its round logged; a resume keeps the earlier ones; bad values are refused naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from client_app.app import app as client_app
from fedcore.config import ConfigError, RunConfig
from fedcore.data.batching import make_batches
from fedcore.data.splits import server_splits
from fedcore.training.evaluate import evaluate
from server_app.federation import run_federation
from server_app.round_models import drop_after, keep_newest, saved_rounds
from server_app.run_log import METRICS
from tests.conftest import tiny_run_config
from tests.inprocess_grid import InProcessGrid


def _federate(cfg: RunConfig) -> Path:
    grid = InProcessGrid(client_app, [{"partition-id": p, "num-partitions": 2} for p in range(2)])
    return run_federation(grid, cfg)


def _global_rows(run_dir: Path) -> dict[int, dict]:
    rows = map(json.loads, (run_dir / METRICS).read_text().splitlines())
    return {row["round"]: row for row in rows if row["kind"] == "global"}


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("fedlora", {}),
        ("droppeft", {"ptls.fraction": 0.25}),
        ("fedavg", {}),
        ("fedbitfit", {}),
        ("leff", {}),
    ],
)
def test_every_second_round_is_saved_and_scores_what_its_round_logged(
    method: str,
    extra: dict,
    tiny_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = tiny_run_config(
        tiny_models["bert"], tmp_path, method=method, rounds=4, **{"output.save-every": 2, **extra}
    )
    run_dir = _federate(cfg)
    saved = saved_rounds(run_dir)
    assert list(saved) == [2, 4] and [p.name for p in saved.values()] == [
        "model-round-0002",
        "model-round-0004",
    ]
    assert (run_dir / "model").is_dir(), "the final model is saved as before"

    tokenizer = AutoTokenizer.from_pretrained(saved[2])
    test = server_splits(cfg.data, cfg.model.task, cfg.seed).test
    test = test.select(range(min(cfg.eval.max_examples, len(test))))
    batches = make_batches(test, tokenizer, cfg.model.task, cfg.model.max_length, cfg.eval.batch_size)
    monkeypatch.chdir(tiny_models["bert"].parent)  # where an adapter's base reference ("bert") resolves
    auto = (
        AutoPeftModelForSequenceClassification
        if cfg.tuning_mode == "lora"
        else AutoModelForSequenceClassification
    )
    logged = _global_rows(run_dir)
    losses = []
    for round_number, folder in saved.items():
        assert f"| rounds | {round_number} of 4 |" in (folder / "README.md").read_text()
        id2label = AutoConfig.from_pretrained(folder).id2label
        assert id2label == {0: "rotten", 1: "fresh"}
        loaded = auto.from_pretrained(folder, id2label=id2label)
        with torch.no_grad():
            metrics = evaluate(loaded, batches, cfg.model.task)
        assert metrics["accuracy"] == logged[round_number]["accuracy"]
        assert metrics["loss"] == pytest.approx(logged[round_number]["loss"], abs=1e-6)
        losses.append(metrics["loss"])
    assert losses[0] != losses[1], "each folder holds its own round's model"


def test_a_resume_keeps_the_earlier_round_models_and_redoes_the_later_ones(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_run_config(tiny_models["bert"], tmp_path, rounds=2, **{"output.save-every": 1})
    run_dir = _federate(cfg)
    before = {r: _files(folder) for r, folder in saved_rounds(run_dir).items()}
    assert list(before) == [1, 2]
    # what a server killed after saving round 3's model, before its checkpoint, leaves
    (run_dir / "model-round-0003").mkdir()
    (run_dir / ".model-round-0003.tmp").mkdir()

    resume = RunConfig.from_flat(
        {**cfg.to_flat(), "resume-from": str(run_dir), "rounds": 4, "output.save-every": 2}
    )
    assert _federate(resume) == run_dir
    assert list(saved_rounds(run_dir)) == [1, 2, 4]
    assert {r: _files(run_dir / f"model-round-000{r}") for r in (1, 2)} == before
    assert not (run_dir / ".model-round-0003.tmp").exists()
    assert "| rounds | 4 of 4 |" in (run_dir / "model-round-0004" / "README.md").read_text()


def _round_folders(run_dir: Path, *names: str) -> None:
    for name in names:
        (run_dir / name).mkdir()
        (run_dir / name / "config.json").write_text("{}")


def test_keep_last_removes_all_but_the_newest_round_models(tmp_path: Path) -> None:
    _round_folders(tmp_path, "model-round-0009", "model-round-0010", "model-round-0002", "model")
    keep_newest(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model-round-0009", "model-round-0010"]
    keep_newest(tmp_path, 0)
    assert list(saved_rounds(tmp_path)) == [9, 10]


def test_drop_after_removes_later_rounds_and_their_leftovers_only(tmp_path: Path) -> None:
    _round_folders(
        tmp_path, "model-round-0002", "model-round-0004", ".model-round-0004.old", ".model-round-0005.tmp"
    )
    _round_folders(tmp_path, "model", ".model.tmp", "checkpoint")
    drop_after(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".model.tmp",
        "checkpoint",
        "model",
        "model-round-0002",
    ]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("output.save-every", -1, "output.save-every: must be greater than or equal to 0"),
        ("output.save-every", "2", "output.save-every: must be a whole number, unquoted"),
        ("output.keep-last", -3, "output.keep-last: must be greater than or equal to 0"),
        (
            "output.keep-last",
            2,
            "output.keep-last=2 keeps the newest round models, but output.save-every is 0",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_the_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        RunConfig.from_flat({key: value})
