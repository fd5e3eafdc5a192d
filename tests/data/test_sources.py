"""Data sources: a node's own file in every supported format, the run's label set, and shared partitions
exactly as the tables' own steps derive them."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from fedcore.config import ConfigError, RunConfig
from fedcore.core import wire
from fedcore.data import tables
from fedcore.data.sources import NodeData, SharedPartition, data_source
from fedcore.data.splits import node_splits, server_splits

#: 20 rows, labels named as the file's owner names them; 5 are "neutral"
ROWS = [
    {"review": f"review number {i}", "stars": ["fresh", "rotten", "fresh", "neutral"][i % 4], "shop": "a"}
    for i in range(20)
]
NODE_RUN = {
    "data.name": "node",
    "data.text-column": "review",
    "data.label-column": "stars",
    "data.labels": "rotten,neutral,fresh",
    "data.client-test-fraction": 0.25,
}


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    """``rows`` in the format the path names: .csv, .jsonl, .parquet, or (no suffix) a save_to_disk folder."""
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    return path


def node_run(**overrides: object) -> RunConfig:
    return RunConfig.from_flat({**NODE_RUN, **overrides})


@pytest.mark.parametrize("name", ["own.csv", "own.jsonl", "own.parquet", "own-saved-dataset"])
def test_a_node_reads_its_own_file_with_the_runs_columns_and_label_order(tmp_path: Path, name: str) -> None:
    cfg = node_run()
    source = data_source(cfg, {"data-path": str(write_rows(tmp_path / name, ROWS))})
    assert isinstance(source, NodeData) and source.partition_id is None
    splits = source.splits(cfg)
    assert (len(splits.train), len(splits.test), splits.num_labels) == (15, 5, 3)
    assert splits.train.features["label"].names == ["rotten", "neutral", "fresh"]
    rows = [*splits.train.to_list(), *splits.test.to_list()]
    by_text = {row["review"]: row["stars"] for row in ROWS}
    assert sorted(r["text"] for r in rows) == sorted(by_text)
    names = ["rotten", "neutral", "fresh"]
    assert all(names[r["label"]] == by_text[r["text"]] for r in rows), "ids follow data.labels"
    assert source.info(cfg) == {wire.NODE_NUM_EXAMPLES: 15}


def test_a_saved_dataset_dict_is_read_from_its_train_split(tmp_path: Path) -> None:
    folder = tmp_path / "dict"
    train = datasets.Dataset.from_pandas(pd.DataFrame(ROWS[:8]))
    datasets.DatasetDict({"train": train, "test": train.select(range(2))}).save_to_disk(str(folder))
    splits = node_splits(node_run().data, "seq-cls", 0, str(folder))
    assert len(splits.train) + len(splits.test) == 8


def test_a_node_whose_data_has_another_label_is_refused_naming_it(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "odd.csv", [*ROWS, {"review": "so so", "stars": "meh", "shop": "a"}])
    cfg = node_run()
    with pytest.raises(tables.DataError, match=r"data.labels: .*label\(s\) \['meh'\] outside") as refused:
        data_source(cfg, {"data-path": str(path)}).splits(cfg)
    assert str(tmp_path) not in str(refused.value), "a node's errors reach the server; its path must not"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"data.text-column": "body"}, "data.text-column: column 'body'"),
        ({"data.label-column": "grade"}, "data.label-column: column 'grade'"),
    ],
)
def test_a_node_file_without_what_the_run_needs_is_refused_naming_the_key(
    tmp_path: Path, overrides: dict[str, object], key: str
) -> None:
    cfg = node_run(**overrides)
    with pytest.raises(tables.DataError, match=key):
        data_source(cfg, {"data-path": str(write_rows(tmp_path / "own.csv", ROWS))}).splits(cfg)


def test_a_node_data_run_fixes_its_labels_and_only_it_names_a_server_test_file() -> None:
    with pytest.raises(ConfigError, match="data.name='node' .* set data.labels to the class names"):
        node_run(**{"data.labels": ""})
    with pytest.raises(ConfigError, match="data.server-test is the server's file in a federation of node"):
        RunConfig.from_flat({"data.server-test": "held-out.csv"})
    assert node_run(**{"model.task": "causal-lm", "data.labels": ""}).data.labels == ""


def test_a_node_chat_file_becomes_prompt_response_rows_for_causal_lm(tmp_path: Path) -> None:
    pairs = [{"prompt": f"question {i}?", "response": f"answer {i}."} for i in range(10)]
    cfg = node_run(**{"model.task": "causal-lm", "data.labels": ""})
    splits = data_source(cfg, {"data-path": str(write_rows(tmp_path / "chat.jsonl", pairs))}).splits(cfg)
    row = splits.train[0]
    assert set(splits.train.column_names) == {"text", "prompt", "response"} and splits.num_labels == 0
    assert row["prompt"] in row["text"] and row["response"] in row["text"]


def test_the_node_config_and_the_run_must_agree_on_where_data_comes_from(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='node config lacks data-path.*--node-config "data-path=<file>"'):
        data_source(node_run(), {"partition-id": 0, "num-partitions": 2})
    with pytest.raises(ValueError, match="data-path is set, but this run partitions the shared dataset"):
        data_source(RunConfig(), {"data-path": str(tmp_path / "own.csv"), "partition-id": 0})


@pytest.mark.parametrize(
    "flat",
    [
        {},  # the default federation: embedded Rotten Tomatoes, Dirichlet label skew
        {"data.partition": "iid", "seed": 3, "data.validation-fraction": 0.1},
        {"data.partition": "natural", "data.natural-column": "movie_name"},
    ],
)
def test_a_shared_partition_holds_the_rows_the_tables_steps_give(flat: dict[str, object]) -> None:
    """The interface adds nothing to the partition: the same rows as load, hold out, partition, split."""
    cfg = RunConfig.from_flat(flat)
    data, seed = cfg.data, cfg.seed
    pool, _ = tables.server_split(tables.load_dataset_table(data, "seq-cls", seed), data, seed)
    pool, _ = tables.validation_split(pool, data, seed)
    train, test = tables.local_split(
        tables.partition(pool, data, 3, 1, seed), data.client_test_fraction, seed
    )

    source = data_source(cfg, {"partition-id": 1, "num-partitions": 3})
    assert source == SharedPartition(1, 3) and source.client_key == "partition-1"
    splits = source.splits(cfg)
    assert splits.train.to_list() == train.to_list() and splits.test.to_list() == test.to_list()
    assert source.info(cfg) == {wire.NODE_PARTITION_ID: 1, wire.NODE_NUM_PARTITIONS: 3}


def test_the_server_of_a_node_federation_holds_only_its_own_file(tmp_path: Path) -> None:
    held_out = write_rows(tmp_path / "server.parquet", ROWS[:8])
    with_file = server_splits(node_run(**{"data.server-test": str(held_out)}).data, "seq-cls", 0)
    assert (len(with_file.pool), len(with_file.test), with_file.num_labels) == (0, 8, 3)
    without = server_splits(node_run().data, "seq-cls", 0)
    assert (len(without.pool), len(without.test), len(without.validation)) == (0, 0, 0)
    assert without.num_labels == 3
