"""A deployed ClientApp is a fresh process per message: what it imports before its work is start-up time.

Each case imports modules in a fresh interpreter and lists which of the named heavy modules got loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: the training stack and the data stack: none is needed to load the app or answer its info query
TRAINING = ("torch", "transformers", "peft", "datasets", "flwr_datasets", "pandas", "pyarrow")
#: plotting: never needed to train
PLOTTING = ("matplotlib", "seaborn")


def loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    probe = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        # what flwr-clientapp loads for every message, the info query included
        ("import client_app.app", TRAINING + PLOTTING),
        # what the train handler imports; peft comes with the first LoRA model only
        ("import client_app.app, client_app.executor", ("peft", *PLOTTING)),
    ],
)
def test_loading_the_client_imports_no_heavy_module_it_does_not_use(
    statement: str, forbidden: tuple[str, ...]
) -> None:
    assert loaded_after(statement, forbidden) == []


def test_looking_through_loaded_modules_does_not_load_plotting() -> None:
    statement = (
        "import inspect, fedcore.data.partitioners\n"
        "inspect.getmodule(inspect.currentframe())  # reads __file__ of every loaded module\n"
        "assert not hasattr(sys.modules['flwr_datasets.visualization'], '__file__')"
    )
    assert loaded_after(statement, PLOTTING) == []


def test_flower_datasets_plotting_still_loads_when_asked_for() -> None:
    statement = (
        "import fedcore.data.partitioners\n"
        "assert 'matplotlib' not in sys.modules\n"
        "from flwr_datasets.visualization import plot_label_distributions\n"
        "import flwr_datasets\n"
        "assert callable(flwr_datasets.visualization.plot_comparison_label_distribution)"
    )
    assert loaded_after(statement, PLOTTING) == list(PLOTTING)
