"""LEFF's proxy text: a local file is read like a data table (same suffix rules), or as lines of text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcore.config import SERVER_VALIDATION
from fedcore.data.proxy import ProxyError, load_proxy_texts
from fedcore.data.splits import server_splits
from fedcore.methods.base import run_proxy_texts
from tests.conftest import tiny_run_config


def test_proxy_files_follow_the_data_loaders_rules(tmp_path: Path) -> None:
    rows = [{"text": f"headline {i}"} for i in range(5)]
    lines = tmp_path / "p.json"  # one object per line under .json: the data loader accepts it, so does LEFF
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = tmp_path / "p.txt"
    plain.write_text("\n".join(r["text"] for r in rows) + "\n\n")
    assert sorted(load_proxy_texts(str(lines), 5, seed=0)) == sorted(r["text"] for r in rows)
    assert sorted(load_proxy_texts(str(plain), 5, seed=0)) == sorted(r["text"] for r in rows)
    tabs = tmp_path / "p.tsv"
    tabs.write_text("text\nheadline\n")
    with pytest.raises(ProxyError, match="proxy.name: unsupported file type"):
        load_proxy_texts(str(tabs), 5, seed=0)


def test_proxy_without_text_column_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("title\nsomething\n")
    with pytest.raises(ProxyError, match="proxy.name: .* has no 'text' column"):
        load_proxy_texts(str(path), 5, seed=0)


def test_server_validation_proxy_is_the_validation_texts(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    cfg = tiny_run_config(
        tiny_models["bert"], tmp_path, **{"proxy.name": SERVER_VALIDATION, "data.validation-fraction": 0.1}
    )
    splits = server_splits(cfg.data, cfg.model.task, cfg.seed)
    texts = run_proxy_texts(cfg, 1000)
    assert sorted(texts) == sorted(t.strip() for t in splits.validation["text"] if t.strip())
    assert not set(texts) & {t.strip() for t in splits.test["text"]}  # never the test split
    assert run_proxy_texts(cfg, 5) == texts[:5]  # a reproducible draw


def test_server_validation_proxy_without_texts_says_what_to_set() -> None:
    with pytest.raises(
        ProxyError, match="proxy.name: 'server:validation' holds no text .*validation-fraction"
    ):
        load_proxy_texts(SERVER_VALIDATION, 5, seed=0, validation_texts=[" ", ""])
