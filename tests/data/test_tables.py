"""Data tables and partitions: sources, column checks, determinism, disjointness and label skew."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from fedcore.config import DataConfig
from fedcore.data import tables

ROWS = [
    {"review": "great soup", "stars": "good", "shop": "a"},
    {"review": "cold fries", "stars": "bad", "shop": "b"},
    {"review": "fine, I guess", "stars": "ok", "shop": "a"},
    {"review": "never again", "stars": "bad", "shop": "c"},
]
CUSTOM = {"text_column": "review", "label_column": "stars", "natural_column": "shop"}


@pytest.fixture(scope="module")
def table() -> datasets.Dataset:
    return tables.load_dataset_table(DataConfig(), "seq-cls", seed=0)


@pytest.fixture(scope="module")
def pool(table: datasets.Dataset) -> datasets.Dataset:
    return tables.server_split(table, DataConfig(), seed=0)[0]


def _parts(pool: datasets.Dataset, cfg: DataConfig, n: int, seed: int = 0) -> list[datasets.Dataset]:
    return [tables.partition(pool, cfg, n, i, seed) for i in range(n)]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        frame.to_parquet(path)
    return path


def test_embedded_table(table: datasets.Dataset) -> None:
    assert len(table) == 12_752
    assert tables.num_labels(table) == 2
    assert table.features["label"].names == ["rotten", "fresh"]
    assert len(set(table["text"])) == len(table)
    assert set(table.column_names) == {"text", "label", "movie_name"}
    assert 0.55 < sum(table["label"]) / len(table) < 0.61


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_file_with_custom_columns(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path / f"reviews{suffix}", ROWS)
    ds = tables.load_dataset_table(DataConfig(name=str(path), **CUSTOM), "seq-cls", seed=0)
    assert ds["text"] == [row["review"] for row in ROWS]
    assert ds.features["label"].names == ["bad", "good", "ok"]
    assert ds["label"] == [1, 0, 2, 0]
    assert ds["shop"] == ["a", "b", "a", "c"]


def test_numeric_labels_are_numbered_in_numeric_order(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": value} for i, value in enumerate([10, 2, 5, 2])]
    ds = tables.load_dataset_table(DataConfig(name=str(_write(tmp_path / "n.csv", rows))), "seq-cls", seed=0)
    assert ds.features["label"].names == ["2", "5", "10"]
    assert ds["label"] == [2, 0, 1, 0]


def test_causal_lm_table_has_text_only(tmp_path: Path) -> None:
    path = _write(tmp_path / "lm.csv", ROWS)
    cfg = DataConfig(name=str(path), text_column="review", label_column="absent")
    ds = tables.load_dataset_table(cfg, "causal-lm", seed=0)
    assert ds.column_names == ["text"]
    with pytest.raises(tables.DataError, match="data.partition: dirichlet"):
        tables.partition(ds, cfg, 2, 0, seed=0)


def test_causal_lm_on_a_labelled_table_is_refused_naming_both_keys(tmp_path: Path) -> None:
    """The server loads its table before any round, so the contradiction stops the run there."""
    cfg = DataConfig(name=str(_write(tmp_path / "reviews.csv", ROWS)), **CUSTOM)
    contradiction = "model.task='causal-lm' contradicts data.label-column='stars'"
    with pytest.raises(tables.DataError, match=contradiction):
        tables.load_dataset_table(cfg, "causal-lm", seed=0)
    texts_only = tables.load_dataset_table(cfg.model_copy(update={"label_column": ""}), "causal-lm", seed=0)
    assert texts_only["text"] == [row["review"] for row in ROWS]
    with pytest.raises(tables.DataError, match="model.task='causal-lm' contradicts data.name='embedded:"):
        tables.load_dataset_table(DataConfig(), "causal-lm", seed=0)


def test_missing_column_names_key_and_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", ROWS)
    cfg = DataConfig(name=str(path), text_column="review", label_column="lbl")
    message = r"data.label-column: column 'lbl' not in .*x\.csv; columns: review, stars, shop"
    with pytest.raises(tables.DataError, match=message):
        tables.load_dataset_table(cfg, "seq-cls", seed=0)


@pytest.mark.parametrize(
    ("name", "rows", "message"),
    [
        ("missing.csv", None, "data.name: file not found"),
        ("notes.txt", ROWS, "data.name: unsupported file type"),
        ("one.csv", [{"text": "a", "label": 1}, {"text": "b", "label": 1}], "at least 2"),
        ("empty.csv", [{"text": None, "label": 1}], "no usable rows in"),
    ],
)
def test_unusable_files_are_refused(
    tmp_path: Path, name: str, rows: list[dict[str, object]] | None, message: str
) -> None:
    path = tmp_path / name
    if rows is not None:
        pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(tables.DataError, match=message):
        tables.load_dataset_table(DataConfig(name=str(path)), "seq-cls", seed=0)


def test_unreachable_hub_suggests_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'someone/set' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(tables.DataError, match="data.name: 'someone/set'.*hub.*local .csv"):
        tables.load_dataset_table(DataConfig(name="someone/set"), "seq-cls", seed=0)


def test_max_examples_is_a_seeded_subset(table: datasets.Dataset) -> None:
    cfg = DataConfig(max_examples=300)
    first = tables.load_dataset_table(cfg, "seq-cls", seed=1)
    assert len(first) == 300
    assert first["text"] == tables.load_dataset_table(cfg, "seq-cls", seed=1)["text"]
    assert first["text"] != tables.load_dataset_table(cfg, "seq-cls", seed=2)["text"]
    assert set(first["text"]) <= set(table["text"])


def test_server_split_is_disjoint_and_seeded(table: datasets.Dataset, pool: datasets.Dataset) -> None:
    pool_again, test = tables.server_split(table, DataConfig(), seed=0)
    assert len(test) == round(0.1 * len(table))
    assert len(pool) + len(test) == len(table)
    assert not set(pool["text"]) & set(test["text"])
    assert pool_again["text"] == pool["text"]
    assert tables.server_split(table, DataConfig(), seed=1)[1]["text"] != test["text"]


def test_validation_split_is_held_out_of_the_pool(pool: datasets.Dataset) -> None:
    """The server's validation rows leave the clients' pool; none by default; a bad share names the key."""
    assert len(tables.validation_split(pool, DataConfig(), seed=0)[1]) == 0
    cfg = DataConfig(validation_fraction=0.1)
    rest, validation = tables.validation_split(pool, cfg, seed=0)
    assert len(validation) == round(0.1 * len(pool)) and len(rest) + len(validation) == len(pool)
    assert not set(rest["text"]) & set(validation["text"])
    assert tables.validation_split(pool, cfg, seed=0)[1]["text"] == validation["text"]
    tiny = pool.select(range(3))
    with pytest.raises(tables.DataError, match="data.validation-fraction"):
        tables.validation_split(tiny, DataConfig(validation_fraction=0.1), seed=0)


def test_local_split() -> None:
    ds = datasets.Dataset.from_dict({"text": [str(i) for i in range(10)]})
    train, test = tables.local_split(ds, 0.2, seed=0)
    assert (len(train), len(test)) == (8, 2)
    assert not set(train["text"]) & set(test["text"])
    train, test = tables.local_split(ds, 0.0, seed=0)
    assert (len(train), len(test)) == (10, 0)
    assert [len(s) for s in tables.local_split(ds.select([0]), 0.5, seed=0)] == [1, 0]


def test_probe_rows_are_held_out_of_training() -> None:
    ds = datasets.Dataset.from_dict({"text": [str(i) for i in range(40)]})
    train, probe = tables.probe_split(ds, 8)
    assert (len(train), len(probe)) == (32, 8)
    assert not set(train["text"]) & set(probe["text"]) and len(set(train["text"]) | set(probe["text"])) == 40
    assert [len(s) for s in tables.probe_split(ds, 100)] == [30, 10], "at most a quarter is held out"
    assert [len(s) for s in tables.probe_split(ds, 0)] == [40, 0]
    assert [len(s) for s in tables.probe_split(ds.select(range(3)), 8)] == [2, 1]
    assert [s["text"] for s in tables.probe_split(ds.select([0]), 8)] == [["0"], ["0"]]


@pytest.mark.parametrize(
    "cfg",
    [
        DataConfig(partition="iid"),
        DataConfig(partition="dirichlet", dirichlet_alpha=0.5),
        DataConfig(partition="natural", natural_column="movie_name"),
    ],
    ids=["iid", "dirichlet", "natural"],
)
def test_partitions_are_deterministic_disjoint_and_cover(pool: datasets.Dataset, cfg: DataConfig) -> None:
    parts = _parts(pool, cfg, 4)
    texts = [p["text"] for p in parts]
    assert texts == [p["text"] for p in _parts(pool, cfg, 4)]
    assert texts != [p["text"] for p in _parts(pool, cfg, 4, seed=1)]
    assert sorted(t for part in texts for t in part) == sorted(pool["text"])
    assert all(len(p) > 0 for p in parts)


def _label_divergence(parts: list[datasets.Dataset]) -> float:
    """Mean total-variation distance between each non-empty partition's label mix and the pooled mix.

    0 means every client sees the global label distribution; values near 1 mean near-disjoint labels.
    """
    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        raise ValueError("data: label divergence of empty partitions is undefined")
    k = max(tables.num_labels(p) for p in nonempty)
    counts = [np.bincount(np.asarray(p["label"], dtype=np.int64), minlength=k) for p in nonempty]
    pooled = np.sum(counts, axis=0) / np.sum(counts)
    return float(np.mean([0.5 * np.abs(c / c.sum() - pooled).sum() for c in counts]))


def test_dirichlet_skews_labels_more_than_iid(pool: datasets.Dataset) -> None:
    iid = _label_divergence(_parts(pool, DataConfig(partition="iid"), 10))
    skewed = _label_divergence(_parts(pool, DataConfig(dirichlet_alpha=0.1), 10))
    assert skewed > 0.1
    assert skewed > 2 * iid


def test_natural_values_stay_in_one_partition(pool: datasets.Dataset) -> None:
    parts = _parts(pool, DataConfig(partition="natural", natural_column="movie_name"), 5)
    movies = [set(p["movie_name"]) for p in parts]
    assert sum(len(m) for m in movies) == len(set().union(*movies)) == len(set(pool["movie_name"]))


@pytest.mark.parametrize("partition_id", [-1, 3])
def test_bad_partition_id_is_refused(pool: datasets.Dataset, partition_id: int) -> None:
    with pytest.raises(tables.DataError, match="partition-id"):
        tables.partition(pool, DataConfig(partition="iid"), 3, partition_id, seed=0)


def test_natural_needs_enough_values(tmp_path: Path) -> None:
    cfg = DataConfig(name=str(_write(tmp_path / "r.csv", ROWS)), partition="natural", **CUSTOM)
    ds = tables.load_dataset_table(cfg, "seq-cls", seed=0)
    with pytest.raises(tables.DataError, match="data.natural-column: 'shop' has 3 distinct values"):
        tables.partition(ds, cfg, 4, 0, seed=0)


def test_rows_without_a_label_or_with_a_blank_text_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(6)]
    rows += [{"text": "no label", "label": None}, {"text": "   ", "label": 1}, {"text": "\t\n", "label": 0}]
    path = _write(tmp_path / "gaps.csv", rows)
    with pytest.warns(UserWarning, match=r"gaps\.csv: dropped 3 of 9 rows with a missing value"):
        ds = tables.load_dataset_table(DataConfig(name=str(path)), "seq-cls", seed=0)
    assert ds["text"] == [f"t{i}" for i in range(6)]
    assert ds.features["label"].names == ["0", "1"], "whole numbers made float by a gap stay integers"


def test_fractional_labels_are_refused(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i / 7} for i in range(200)]
    path = _write(tmp_path / "scores.csv", rows)
    with pytest.raises(tables.DataError, match="data.label-column: column 'label' .* not whole"):
        tables.load_dataset_table(DataConfig(name=str(path)), "seq-cls", seed=0)


def test_only_blank_texts_is_no_usable_rows(tmp_path: Path) -> None:
    path = _write(tmp_path / "blank.jsonl", [{"text": " ", "label": 0}, {"text": "", "label": 1}])
    with pytest.raises(tables.DataError, match="no usable rows in"):
        tables.load_dataset_table(DataConfig(name=str(path)), "seq-cls", seed=0)
