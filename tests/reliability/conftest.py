from __future__ import annotations

import pathlib

import pytest
from reliability_helpers import tiny_config

from posenc.train import train


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A finished tiny run with checkpoints at steps 2 and 4 (copy it before changing anything)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(run_dir), log=lambda s: None)
    return run_dir
