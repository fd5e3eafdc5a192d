"""`fedlayer deploy supernode --data-path`: a node with its own data states its file, not a partition."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from fedcore.deploy.cli import main as deploy

NODE = ["supernode", "--superlink", "127.0.0.1:9092", "--insecure"]


def test_a_node_with_its_own_data_gets_its_absolute_path_and_no_partition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "clinic" / "reviews.csv"
    own.parent.mkdir()
    own.write_text("comment,verdict\ngood,fresh\n")
    assert deploy([*NODE, "--data-path", str(own), "--dry-run"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[words.index("--node-config") + 1] == f'data-path="{own}"'


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--data-path", "{missing}"], "does not exist: name this node's data file"),
        (["--data-path", "{existing}", "--partition-id", "0"], "give no --partition-id/--num-partitions"),
        (["--partition-id", "0"], "give --partition-id and --num-partitions, or --data-path"),
    ],
)
def test_a_node_states_either_its_own_data_or_a_partition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    paths = {"missing": str(tmp_path / "nowhere.csv"), "existing": str(tmp_path)}
    assert deploy([*NODE, *(o.format(**paths) for o in options), "--dry-run"]) == 1
    assert message in capsys.readouterr().err
