"""LEFF's proxy text: a local file is read like a data table (same suffix rules), or as lines of text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcore.data.proxy import ProxyError, load_proxy_texts


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
    with pytest.raises(ProxyError, match="leff.proxy: unsupported file type"):
        load_proxy_texts(str(tabs), 5, seed=0)


def test_proxy_without_text_column_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("title\nsomething\n")
    with pytest.raises(ProxyError, match="leff.proxy: .* has no 'text' column"):
        load_proxy_texts(str(path), 5, seed=0)
