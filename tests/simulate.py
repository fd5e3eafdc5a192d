"""Run one federation on Flower's Ray engine (used by tests in-process and as a killable subprocess).

python tests/simulate.py CONFIG.json SUPERNODES
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client_app.app import app as default_client_app  # noqa: E402
from fedcore.config import RunConfig  # noqa: E402
from server_app.federation import run_federation  # noqa: E402

#: a private local Ray instance with this machine's two cores, one core per client actor
LOCAL_RAY = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}}


def simulate(
    cfg: RunConfig,
    supernodes: int,
    client_app: ClientApp = default_client_app,
    backend_config: dict | None = None,
) -> Path:
    """Run one federation; returns its run directory (``backend_config``: Flower's Ray settings)."""
    run_dirs: list[Path] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_dirs.append(run_federation(grid, cfg))

    run_simulation(
        server,
        client_app,
        num_supernodes=supernodes,
        backend_config=backend_config or LOCAL_RAY,
    )
    return run_dirs[0]


if __name__ == "__main__":
    flat = json.loads(Path(sys.argv[1]).read_text())
    simulate(RunConfig.from_flat(flat), int(sys.argv[2]))
