"""The ServerApp reads Flower's record of the run's overrides, so each of them wins over the preset."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from fedcore.config import RunConfig
from server_app import app


def test_every_override_wins_over_the_preset_even_a_default_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[RunConfig] = []
    monkeypatch.setattr(app, "run_federation", lambda grid, cfg: started.append(cfg))
    defaults = RunConfig().to_flat()
    overrides = {
        "preset": "paper-cls",
        "train.local-steps": defaults["train.local-steps"],
        "output.dir": str(tmp_path),
    }
    grid = SimpleNamespace(run=SimpleNamespace(override_config=overrides))
    app.main(grid, SimpleNamespace(run_config={**defaults, **overrides}))
    (cfg,) = started
    assert cfg.train.local_steps == defaults["train.local-steps"], "the override back to the default wins"
    assert (cfg.rounds, cfg.data.name) == (20, "embedded:bbc-news"), "the preset sets what was not overridden"
