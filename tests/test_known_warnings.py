"""Exactly the known third-party deprecation notices are silenced; every other warning still shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedcore.cli.launch import flower_env

ROOT = Path(__file__).resolve().parents[1]

_BUILD_LORA_MODEL = """
import sys, warnings
from fedcore.config import RunConfig
from fedcore.model import build_model
build_model(RunConfig.from_flat({"model.name": sys.argv[1], "method": "fedlora"}), 2)
print("model built")
warnings.warn("an unrelated notice", FutureWarning)
"""

_RAY_INIT_NOTICE = """
import warnings
tip = "Tip: In future versions of Ray, Ray will no longer override accelerator visible devices env var"
warnings.warn_explicit(tip, FutureWarning, "worker.py", 2051, module="ray._private.worker")
warnings.warn_explicit("another Ray notice", FutureWarning, "worker.py", 2066, module="ray._private.worker")
"""


def test_loading_a_lora_model_warns_nothing_but_other_warnings_still_count(
    tiny_models: dict[str, Path],
) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", _BUILD_LORA_MODEL, str(tiny_models["bert"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "model built" in done.stdout, done.stderr
    assert "is_gradient_checkpointing" not in done.stderr
    assert done.returncode != 0 and "FutureWarning: an unrelated notice" in done.stderr


def test_flower_processes_started_by_fedlayer_do_not_show_rays_accelerator_notice(tmp_path: Path) -> None:
    env = flower_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _RAY_INIT_NOTICE], env=env, capture_output=True, text=True, check=True
    )
    assert "Tip: In future versions of Ray" not in done.stderr
    assert "FutureWarning: another Ray notice" in done.stderr
