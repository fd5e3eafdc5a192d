"""Text data for federated runs: load one table, hold out a server test set, partition the rest.

Every source becomes a ``datasets.Dataset`` with a ``text`` column, a ``label`` ClassLabel column for
classification, and the natural-partition column under its own name when one is configured. Chat tables
also carry ``prompt`` and ``response``, which batching renders in the model's own chat format. All
randomness comes from the run seed, so every client that computes the same partition gets the same rows.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import yaml

from fedcore.config import DataConfig
from fedcore.data import assets
from fedcore.data.chat import format_chat
from fedcore.data.partitioners import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner, Partitioner

#: Helper column holding each row's natural group while partitioning; never returned.
_GROUP = "__natural_group__"
_RESERVED = ("text", "label")
_CSV_SUFFIXES = (".csv", ".csv.bz2", ".csv.gz")
_JSON_SUFFIXES = (".jsonl", ".json")
#: local table files read_table understands
TABLE_SUFFIXES = (*_CSV_SUFFIXES, *_JSON_SUFFIXES, ".parquet")
#: Embedded unlabelled text for language modelling (each is also the name of its asset).
_LM_EMBEDDED = ("austen", "chatterbot")
#: Embedded labelled classification tables.
_LABELLED_EMBEDDED = ("rotten-tomatoes", "bbc-news")


class DataError(ValueError):
    """The data configuration cannot produce a usable table or partition; the message names the key."""


def load_dataset_table(cfg: DataConfig, task: str, seed: int) -> datasets.Dataset:
    """Load ``cfg.name`` as a table of ``text`` (+ ``label`` for seq-cls, + the natural column).

    Sources: ``embedded:rotten-tomatoes``, ``embedded:bbc-news`` (5 topics), and for causal-lm
    ``embedded:austen`` (natural column ``book``) or ``embedded:chatterbot`` (``topic``), all with their
    own columns (``data.text-column``/``data.label-column`` do not apply); a local
    .csv/.csv.bz2/.csv.gz/.jsonl/.json/.parquet file; or a hub dataset id.
    Rows missing a used column are dropped. Labels are numbered in ``data.labels`` order when it is set,
    else in sorted order of their values (an embedded dataset's own order where it has one).
    ``cfg.max_examples`` keeps a seed-determined subset, taken after label numbering so ids stay stable.
    """
    if cfg.natural_column in _RESERVED:
        raise DataError(
            f"data.natural-column: '{cfg.natural_column}' is a reserved output column name; "
            f"use a column named differently"
        )
    name = cfg.name
    if name.startswith(assets.EMBEDDED_PREFIX):
        table = _load_embedded(name.removeprefix(assets.EMBEDDED_PREFIX), cfg, task)
    elif name.lower().endswith(TABLE_SUFFIXES) or Path(name).exists():
        table = file_table(read_table(Path(name), "data.name"), cfg, task, name, cfg.natural_column)
    else:
        table = file_table(_load_hub(name), cfg, task, name, cfg.natural_column)
    return _capped(table, cfg, seed)


def load_file_table(
    path: str, key: str, cfg: DataConfig, task: str, seed: int, source: str = ""
) -> datasets.Dataset:
    """A node's own data file, or the server's held-out file: the run's columns and label set, at most
    ``data.max-examples`` rows. ``key`` names the setting that points at the file; errors call the file
    ``source`` (default: its path; a node's errors reach the server, its path must not)."""
    if task == "seq-cls" and not configured_labels(cfg):
        raise DataError(
            f"data.labels: {key} is read with the run's label set, which data.labels fixes for every "
            f"node; set it to the class names in order, e.g. data.labels='negative,positive'"
        )
    frame = read_table(Path(path).expanduser(), key, source)
    return _capped(file_table(frame, cfg, task, source or path), cfg, seed)


def empty_table(cfg: DataConfig, task: str) -> datasets.Dataset:
    """A table with no rows and the run's columns (a server without a held-out file)."""
    features = {"text": datasets.Value("string")}
    if task == "seq-cls":
        features["label"] = datasets.ClassLabel(names=configured_labels(cfg))
    return datasets.Dataset.from_dict({name: [] for name in features}, features=datasets.Features(features))


def configured_labels(cfg: DataConfig) -> list[str]:
    """``data.labels`` as a list of names (empty: the data's own labels)."""
    return [name.strip() for name in cfg.labels.split(",") if name.strip()]


def file_table(
    frame: pd.DataFrame, cfg: DataConfig, task: str, source: str, natural_column: str = ""
) -> datasets.Dataset:
    """A user's table with the run's columns. For causal-lm a table without ``data.text-column`` but with
    ``prompt`` and ``response`` columns is a chat table (batching renders it in the model's chat format)."""
    columns = {str(c) for c in frame.columns}
    if task == "causal-lm" and cfg.text_column not in columns and {"prompt", "response"} <= columns:
        pairs = zip(frame["prompt"], frame["response"], strict=True)
        frame = frame.assign(text=[format_chat(None, str(p), str(r)).text for p, r in pairs])
        return _frame_to_table(frame, "text", "", natural_column, task, source, keep=("prompt", "response"))
    classes = configured_labels(cfg) or None
    return _frame_to_table(frame, cfg.text_column, cfg.label_column, natural_column, task, source, classes)


def _capped(table: datasets.Dataset, cfg: DataConfig, seed: int) -> datasets.Dataset:
    """``data.max-examples`` seed-chosen rows, taken after label numbering so ids stay stable."""
    if 0 < cfg.max_examples < len(table):
        table = _take(table, np.random.default_rng(seed).permutation(len(table))[: cfg.max_examples])
    return table


def _load_embedded(name: str, cfg: DataConfig, task: str) -> datasets.Dataset:
    if name in _LM_EMBEDDED:
        return _load_embedded_lm(name, cfg, task)
    if task == "causal-lm" and name in _LABELLED_EMBEDDED:
        raise DataError(
            f"model.task='causal-lm' contradicts data.name='embedded:{name}', a labelled classification "
            f"table: use model.task='seq-cls', or unlabelled text such as data.name='embedded:austen'"
        )
    if name == "bbc-news":
        path = assets.asset_path("bbc-news")
        frame = pd.read_parquet(path).drop_duplicates(subset="text", keep="first")
        classes = configured_labels(cfg) or None
        return _frame_to_table(frame, "text", "topic", cfg.natural_column, task, str(path), classes)
    if name != "rotten-tomatoes":
        raise DataError(
            f"data.name: unknown embedded dataset '{name}'; known: rotten-tomatoes, bbc-news, "
            f"{', '.join(_LM_EMBEDDED)}"
        )
    path = assets.asset_path("rotten-tomatoes")
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(["rotten", "fresh"])].drop_duplicates(subset="text", keep="first")
    return _frame_to_table(
        frame,
        "text",
        "category",
        cfg.natural_column,
        task,
        str(path),
        classes=configured_labels(cfg) or ["rotten", "fresh"],
        keep=("movie_name",),
    )


def _load_embedded_lm(name: str, cfg: DataConfig, task: str) -> datasets.Dataset:
    """Austen: chunks with their ``book``; ChatterBot: pairs with their ``topic``. Neither has labels."""
    if task != "causal-lm":
        raise DataError(
            f"data.name: embedded:{name} is unlabelled text for language modelling; set model.task=causal-lm"
        )
    path = assets.asset_path(name)
    frame = austen_chunks(pd.read_parquet(path)) if name == "austen" else chat_pairs(path)
    keep = tuple(column for column in frame.columns if column != "text")
    return _frame_to_table(frame, "text", "", cfg.natural_column, task, str(path), keep=keep)


def austen_chunks(lines: pd.DataFrame) -> pd.DataFrame:
    """Columns (book, line), books in order -> (text, book): each book's lines cut by ``chunk_lines``."""
    rows = [
        (chunk, book)
        for book, group in lines.groupby("book", sort=False)
        for chunk in chunk_lines(group["line"].tolist())
    ]
    return pd.DataFrame(rows, columns=["text", "book"])


def chunk_lines(lines: Iterable[str], min_words: int = 60, max_words: int = 120) -> list[str]:
    """Consecutive non-empty lines joined into passages of about ``min_words`` to ``max_words`` words.

    A passage ends at a paragraph end (an empty line) once it has ``min_words``, or before a line that
    would take it past ``max_words``: whole paragraphs where they fit, so each passage reads naturally
    and fits a short context. Lines of one paragraph are joined by spaces, paragraphs by newlines.
    """
    chunks: list[str] = []
    paragraphs: list[list[str]] = [[]]
    words = 0
    for raw in lines:
        line = raw.strip()
        n = len(line.split())
        if words and (words + n > max_words or (n == 0 and words >= min_words)):
            chunks.append(_join_paragraphs(paragraphs))
            paragraphs, words = [[]], 0
        if n == 0:
            if paragraphs[-1]:
                paragraphs.append([])
        else:
            paragraphs[-1].append(line)
            words += n
    if words:
        chunks.append(_join_paragraphs(paragraphs))
    return chunks


def _join_paragraphs(paragraphs: list[list[str]]) -> str:
    return "\n".join(" ".join(lines) for lines in paragraphs if lines)


def chat_pairs(directory: Path) -> pd.DataFrame:
    """(prompt, response, topic, text) from every ``<topic>.yml`` in ChatterBot's corpus format.

    Each conversation is a list of statements, each answering the one before, so n statements give
    n - 1 pairs. Repeated pairs are dropped (first kept): a copy must not sit in both training and test
    data. ``text`` is the plain "User:/Assistant:" layout, since the table cannot know the model.
    """
    rows = []
    for path in sorted(directory.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in document.get("conversations") or []:
            statements = [str(statement).strip() for statement in conversation]
            rows += [(prompt, response, path.stem) for prompt, response in itertools.pairwise(statements)]
    frame = pd.DataFrame(rows, columns=["prompt", "response", "topic"])
    frame = frame.drop_duplicates(subset=["prompt", "response"], keep="first")
    pairs = zip(frame["prompt"], frame["response"], strict=True)
    frame["text"] = [format_chat(None, prompt, response).text for prompt, response in pairs]
    return frame


def read_table(path: Path, key: str, shown: str = "") -> pd.DataFrame:
    """A local table file by its suffix (``TABLE_SUFFIXES``; .json: records, else one object per line), or
    a folder written by ``save_to_disk``.

    Every problem is a DataError naming ``key``, the config key that pointed at the file, and the file as
    ``shown`` (default: its path).
    """
    shown = shown or str(path)
    lower = path.name.lower()
    if path.is_dir():
        return _saved_dataset(path, key, shown)
    if not lower.endswith(TABLE_SUFFIXES):
        raise DataError(
            f"{key}: unsupported file type for {shown}; use one of {', '.join(TABLE_SUFFIXES)} or a folder "
            f"written by datasets' save_to_disk"
        )
    if not path.is_file():
        raise DataError(f"{key}: file not found: {shown}")
    try:
        if lower.endswith(_CSV_SUFFIXES):
            return pd.read_csv(path)
        if lower.endswith(".jsonl"):
            return pd.read_json(path, lines=True)
        if lower.endswith(".json"):
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
        return pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"{key}: cannot read {shown}: {exc}") from exc


def _saved_dataset(path: Path, key: str, shown: str) -> pd.DataFrame:
    """A ``save_to_disk`` folder: a Dataset, or a DatasetDict's ``train`` split."""
    try:
        saved = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{key}: {shown} is a folder but no dataset saved by save_to_disk: {exc}") from exc
    if isinstance(saved, datasets.DatasetDict):
        if "train" not in saved:
            raise DataError(f"{key}: {shown} holds splits {sorted(saved)} and no 'train' split to read")
        saved = saved["train"]
    return saved.to_pandas()


def _load_hub(name: str) -> pd.DataFrame:
    """Hub ids need network access; failures become one message pointing at offline alternatives."""
    try:
        return datasets.load_dataset(name, split="train").to_pandas()
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"data.name: '{name}' is not a local file and could not be loaded from the dataset hub "
            f"(unreachable or unknown: {first_line}); use a local .csv/.jsonl/.parquet file or "
            f"embedded:rotten-tomatoes"
        ) from exc


def _frame_to_table(
    frame: pd.DataFrame,
    text_column: str,
    label_column: str,
    natural_column: str,
    task: str,
    source: str,
    classes: list[Any] | None = None,
    keep: tuple[str, ...] = (),
) -> datasets.Dataset:
    """Check and rename columns, drop incomplete rows, number labels; ``classes`` fixes the label order."""
    needed = {"data.text-column": text_column}
    if task == "seq-cls":
        needed["data.label-column"] = label_column
    if natural_column:
        needed["data.natural-column"] = natural_column
    columns = [str(c) for c in frame.columns]
    if task == "causal-lm" and label_column in columns:
        raise DataError(
            f"model.task='causal-lm' contradicts data.label-column='{label_column}', a label column of "
            f"{source}: use model.task='seq-cls' to classify it, or data.label-column='' to model its texts"
        )
    for key, column in needed.items():
        if column not in columns:
            raise DataError(f"{key}: column '{column}' not in {source}; columns: {', '.join(columns)}")
    frame = _usable_rows(frame, list(needed.values()), text_column, source)

    out = {"text": frame[text_column].astype(str).tolist()}
    features = {"text": datasets.Value("string")}
    if task == "seq-cls":
        values = _label_values(frame[label_column], label_column, source)
        if classes is None:
            classes = sorted(values.unique().tolist())
        if len(classes) < 2:
            raise DataError(
                f"data.label-column: column '{label_column}' in {source} has {len(classes)} distinct "
                f"value(s); classification needs at least 2"
            )
        ids = {str(value): i for i, value in enumerate(classes)}
        names = values.astype(str)
        unexpected = sorted(set(names) - set(ids))
        if unexpected:
            raise DataError(
                f"data.labels: {source} has label(s) {unexpected} outside the run's label set "
                f"{list(ids)}; relabel or drop those rows, or add them to data.labels (every node must "
                f"use the same list, in the same order)"
            )
        out["label"] = [ids[name] for name in names]
        features["label"] = datasets.ClassLabel(names=[str(c) for c in classes])
    for column in dict.fromkeys((*keep, natural_column)):
        if column:
            out[column] = frame[column].astype(str).tolist()
            features[column] = datasets.Value("string")
    return datasets.Dataset.from_dict(out, features=datasets.Features(features))


def _usable_rows(frame: pd.DataFrame, columns: list[str], text_column: str, source: str) -> pd.DataFrame:
    """Rows with every used column present and a text that is not blank; says how many were dropped."""
    usable = frame[columns].notna().all(axis=1) & (frame[text_column].astype(str).str.strip() != "")
    if not usable.any():
        raise DataError(f"no usable rows in {source} (every row lacks {' or '.join(columns)})")
    dropped = int((~usable).sum())
    if dropped:
        warnings.warn(
            f"{source}: dropped {dropped} of {len(frame)} rows with a missing value in "
            f"{', '.join(columns)} or a blank text",
            stacklevel=3,
        )
    return frame[usable]


def _label_values(values: pd.Series, label_column: str, source: str) -> pd.Series:
    """Labels as class values: names, or integers; numbers with a fractional part cannot be classes."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return values.astype(str)
    fractional = values[values != values.round()]
    if len(fractional):
        raise DataError(
            f"data.label-column: column '{label_column}' in {source} holds numbers that are not whole "
            f"(e.g. {fractional.iloc[0]!r}); classification needs class names or integer labels"
        )
    return values.astype("int64")


def num_labels(ds: datasets.Dataset) -> int:
    """Number of classes of the table's ``label`` column (from its ClassLabel, so absent classes count)."""
    feature = ds.features.get("label")
    if not isinstance(feature, datasets.ClassLabel):
        raise DataError("data: this table has no class labels (task causal-lm?)")
    return feature.num_classes


def label_names(ds: datasets.Dataset) -> list[str]:
    """The class names of the table's ``label`` column, in id order; empty for unlabelled text."""
    feature = ds.features.get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else []


def _take(ds: datasets.Dataset, rows: np.ndarray) -> datasets.Dataset:
    """Copy rows in the given order into a plain table: no indices mapping slowing later column reads."""
    return datasets.Dataset.from_dict(ds[rows.tolist()], features=ds.features)


def _column(ds: datasets.Dataset, name: str) -> list[Any]:
    """All values of one column in one batch read (row-by-row iteration of a column is slow)."""
    return ds.select_columns([name])[:][name]


def _split(ds: datasets.Dataset, n_test: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    order = np.random.default_rng(seed).permutation(len(ds))
    return _take(ds, order[n_test:]), _take(ds, order[:n_test])


def server_split(
    ds: datasets.Dataset, cfg: DataConfig, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train pool, server test set): the server evaluates on rows no client ever trains on."""
    n_test = round(len(ds) * cfg.test_fraction)
    if not 0 < n_test < len(ds):
        raise DataError(
            f"data.test-fraction: {cfg.test_fraction} of {len(ds)} rows leaves no server test rows "
            f"or no training rows"
        )
    return _split(ds, n_test, seed)


def validation_split(
    pool: datasets.Dataset, cfg: DataConfig, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train pool, server validation set): labelled rows the server holds for choosing hyperparameters,
    so that the test split is never looked at before a comparison runs. Fraction 0: no validation rows."""
    n_validation = round(len(pool) * cfg.validation_fraction)
    if cfg.validation_fraction > 0 and not 0 < n_validation < len(pool):
        raise DataError(
            f"data.validation-fraction: {cfg.validation_fraction} of {len(pool)} pool rows leaves no "
            f"validation rows or no training rows"
        )
    if n_validation == 0:
        return pool, pool.select([])
    return _split(pool, n_validation, seed + 1)


def local_split(
    ds: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A client's own (train, test); tiny partitions keep at least one training row, fraction 0 no test."""
    n_test = min(round(len(ds) * fraction), len(ds) - 1) if fraction > 0 else 0
    if n_test <= 0:
        return ds, ds.select([])
    return _split(ds, n_test, seed)


def probe_split(train: datasets.Dataset, count: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(rows to train on, rows held out for DropPEFT's probe), the probe taken from the end of ``train``.

    The bandit's reward is the loss ratio of a round on rows that round did not train on; the client's
    test rows are not used, since their accuracy is reported. At most a quarter of the rows (at least one)
    is held out, so a small partition still trains on most of its data; a one-row partition probes on the
    row it trains on.
    """
    if count <= 0:
        return train, train.select([])
    if len(train) < 2:
        return train, train
    held = min(count, max(1, len(train) // 4))
    return train.select(range(len(train) - held)), train.select(range(len(train) - held, len(train)))


def partition(
    pool: datasets.Dataset, cfg: DataConfig, num_partitions: int, partition_id: int, seed: int
) -> datasets.Dataset:
    """Rows of one client: a deterministic function of (pool, cfg, num_partitions, partition_id, seed)."""
    if num_partitions < 1:
        raise DataError(f"num-partitions: must be at least 1 (got {num_partitions})")
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id: must be in [0, {num_partitions - 1}] (got {partition_id})")
    if num_partitions > len(pool):
        raise DataError(f"num-partitions: {num_partitions} partitions of only {len(pool)} rows")
    if cfg.partition == "iid":
        shuffled = _take(pool, np.random.default_rng(seed).permutation(len(pool)))
        return _load(IidPartitioner(num_partitions), shuffled, partition_id)
    if cfg.partition == "dirichlet":
        return _dirichlet(pool, cfg.dirichlet_alpha, num_partitions, partition_id, seed)
    return _natural(pool, cfg.natural_column, num_partitions, partition_id, seed)


def _load(partitioner: Partitioner, pool: datasets.Dataset, partition_id: int) -> datasets.Dataset:
    partitioner.dataset = pool
    return partitioner.load_partition(partition_id)


def _dirichlet(
    pool: datasets.Dataset, alpha: float, num_partitions: int, partition_id: int, seed: int
) -> datasets.Dataset:
    """Label skew via flwr-datasets; if small alphas keep missing the minimum size, relax it step by step.

    flwr-datasets resamples up to 10 times before giving up; halving the minimum on each give-up keeps
    every client non-empty where possible and stays deterministic (same seed, same sequence of draws).
    """
    if "label" not in pool.column_names:
        raise DataError(
            "data.partition: dirichlet splits by label, but this table has no labels (task causal-lm); "
            "use iid or natural"
        )
    min_size = min(10, len(pool) // (4 * num_partitions))
    while True:
        partitioner = DirichletPartitioner(
            num_partitions, partition_by="label", alpha=alpha, min_partition_size=min_size, seed=seed
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _load(partitioner, pool, partition_id)
        except ValueError:
            if min_size == 0:
                raise
            min_size //= 2


def _natural(
    pool: datasets.Dataset, column: str, num_partitions: int, partition_id: int, seed: int
) -> datasets.Dataset:
    """Each distinct value of ``column`` goes to exactly one partition (seeded round-robin over values)."""
    if column not in pool.column_names:
        raise DataError(
            f"data.natural-column: column '{column}' not in the table; "
            f"columns: {', '.join(pool.column_names)}"
        )
    natural = _column(pool, column)
    values = sorted(set(natural))
    if len(values) < num_partitions:
        raise DataError(
            f"data.natural-column: '{column}' has {len(values)} distinct values, fewer than the "
            f"{num_partitions} partitions"
        )
    order = np.random.default_rng(seed).permutation(len(values))
    group = {values[j]: position % num_partitions for position, j in enumerate(order)}
    grouped = pool.add_column(_GROUP, [group[v] for v in natural])
    return _load(NaturalIdPartitioner(partition_by=_GROUP), grouped, partition_id).remove_columns(_GROUP)
