"""Resuming a checkpoint under another model, encoding, data or seed is refused, saying what differs;
changed optimizer settings are reported."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
from reliability_helpers import copy_run, tiny_config

import posenc.train.drift as drift
from posenc.cli import main
from posenc.train import RunConfig, train
from posenc.train.checkpoint import CheckpointError
from posenc.train.config import to_toml

CHANGES: dict[str, tuple[Callable[[RunConfig], None], str]] = {
    "model width": (lambda c: setattr(c.model, "d_model", 32), "model.d_model: checkpoint 16, this run 32"),
    "encoding": (lambda c: setattr(c.model, "encoding", "sinusoidal"),
                 "model.encoding: checkpoint 'none', this run 'sinusoidal'"),
    "task": (lambda c: setattr(c.data, "task", "reverse"), "data.task: checkpoint 'copy', this run 'reverse'"),
    "batch size": (lambda c: setattr(c.data, "batch_size", 8), "data.batch_size: checkpoint 4, this run 8"),
    "lengths": (lambda c: setattr(c.data, "train_lengths", [1, 5]),
                "data.train_lengths: checkpoint [1, 4], this run [1, 5]"),
    "seed": (lambda c: setattr(c.train, "seed", 1), "train.seed: checkpoint 0, this run 1"),
    "grad accum": (lambda c: setattr(c.train, "grad_accum", 2), "train.grad_accum: checkpoint 1, this run 2"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_drift_is_refused_naming_the_difference(trained_run: pathlib.Path, tmp_path: pathlib.Path, change: str) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    cfg = tiny_config(run, steps=6)
    apply, expected = CHANGES[change]
    apply(cfg)
    with pytest.raises(CheckpointError, match="step_00000004") as info:
        train(cfg, log=lambda s: None)
    assert expected in str(info.value)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]


def test_world_size_is_not_drift(trained_run: pathlib.Path, tmp_path: pathlib.Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """data.batch_size is the global batch, split among the processes: the batch stream is the same on any number
    of them, so a run resumes on another world size (tests/train/test_distributed.py does it with torchrun)."""
    run = copy_run(trained_run, tmp_path / "run")
    monkeypatch.setattr(drift, "world_size", lambda: 2)
    assert "world_size" not in drift.run_signature(tiny_config(run, steps=6))
    assert train(tiny_config(run, steps=6), log=lambda s: None).step == 6


def test_cli_refuses_drift_with_exit_2(trained_run: pathlib.Path, tmp_path: pathlib.Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    (tmp_path / "run.toml").write_text(to_toml(tiny_config(run, steps=6)))
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--encoding", "learned"]) == 2
    assert "model.encoding: checkpoint 'none', this run 'learned'" in capsys.readouterr().err


def test_changed_optimizer_settings_are_reported(trained_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    cfg = tiny_config(run, steps=6)
    cfg.optim.lr = 1e-3
    logs: list[str] = []
    assert train(cfg, log=logs.append).step == 6
    assert any("changed setting, optim.lr: checkpoint 0.003, this run 0.001" in line for line in logs), logs


def _groups(state_json: pathlib.Path) -> list[tuple[float, list[float], float]]:
    import json

    doc = json.loads(state_json.read_text())
    return [(g["weight_decay"], list(g["betas"]), g["eps"]) for g in doc["optimizer"]["param_groups"]]


def test_changed_optimizer_settings_take_effect(trained_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The checkpoint's moments are kept; its hyperparameters give way to this run's (they used to be restored
    over the new config, while the log said the change was applied)."""
    run = copy_run(trained_run, tmp_path / "run")
    cfg = tiny_config(run, steps=6)
    cfg.optim.weight_decay, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps = 0.5, 0.5, 0.9, 1e-3
    logs: list[str] = []
    assert train(cfg, log=logs.append).step == 6
    assert any("changed setting, optim.weight_decay: checkpoint 0.01, this run 0.5" in line for line in logs), logs
    assert _groups(run / "checkpoints" / "step_00000004" / "state.json") == [(0.01, [0.9, 0.98], 1e-9),
                                                                             (0.0, [0.9, 0.98], 1e-9)]
    assert _groups(run / "checkpoints" / "step_00000006" / "state.json") == [(0.5, [0.5, 0.9], 1e-3),
                                                                             (0.0, [0.5, 0.9], 1e-3)]


def test_optimizer_kind_may_change_on_resume(trained_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    cfg = tiny_config(run, steps=6)
    cfg.optim.name = "adam"
    logs: list[str] = []
    assert train(cfg, log=logs.append).step == 6
    assert any("optim.name: checkpoint 'adamw', this run 'adam'" in line for line in logs), logs
