"""Flower ServerApp entry point: validate the run config, then run the federation."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcore.config import RunConfig
from server_app.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(dict(context.run_config), grid.run.override_config)
    run_federation(grid, cfg)
