"""Truncated and bit-flipped checkpoints: a clean error naming the file, a non-zero exit from the CLI, and
``--resume auto`` / ``load_run`` falling back to the newest checkpoint that verifies."""

from __future__ import annotations

import pathlib
import warnings

import pytest
from reliability_helpers import copy_run, tiny_config

from posenc.cli import main
from posenc.train import load_run, train
from posenc.train.checkpoint import CheckpointError, latest_valid, read_state
from posenc.train.config import to_toml


def _truncate(path: pathlib.Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path: pathlib.Path, where: float) -> None:
    data = bytearray(path.read_bytes())
    data[min(int(len(data) * where), len(data) - 1)] ^= 0x01  # one bit
    path.write_bytes(bytes(data))


CORRUPTIONS = [
    ("model.safetensors", "truncate", 0.0), ("model.safetensors", "truncate", 0.01),
    ("model.safetensors", "truncate", 0.5), ("model.safetensors", "truncate", 0.999),
    ("trainer.safetensors", "truncate", 0.5), ("state.json", "truncate", 0.5), ("state.json", "truncate", 0.0),
    ("model.safetensors", "flip", 0.003), ("model.safetensors", "flip", 0.5), ("model.safetensors", "flip", 1.0),
    ("trainer.safetensors", "flip", 0.7), ("state.json", "flip", 0.05), ("state.json", "flip", 0.5),
    ("state.json", "flip", 0.97),
]


@pytest.mark.parametrize(("name", "how", "where"), CORRUPTIONS)
def test_corrupt_checkpoint_is_refused_and_skipped(
    trained_run: pathlib.Path, tmp_path: pathlib.Path, name: str, how: str, where: float
) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    bad, good = run / "checkpoints" / "step_00000004", run / "checkpoints" / "step_00000002"
    (_truncate if how == "truncate" else _flip)(bad / name, where)
    with pytest.raises(CheckpointError, match="step_00000004"):
        read_state(bad)
    with pytest.raises(CheckpointError, match="step_00000004"):
        load_run(run, checkpoint=bad)
    with pytest.warns(UserWarning, match="skipping checkpoint .*step_00000004"):
        found = latest_valid(run)
    assert found is not None and found[0] == good and found[1]["step"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, _ = load_run(run)  # the newest valid one
    assert not model.training


def test_cli_exits_non_zero_naming_the_corrupt_file(
    trained_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    bad = run / "checkpoints" / "step_00000004"
    _truncate(bad / "model.safetensors", 0.5)
    assert main(["eval", str(run), "--checkpoint", str(bad)]) == 2
    assert f"checkpoint {bad} is corrupt" in capsys.readouterr().err
    cfg = tiny_config(run, steps=6)
    (tmp_path / "run.toml").write_text(to_toml(cfg))
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--resume", str(bad)]) == 2
    assert f"checkpoint {bad} is corrupt: model.safetensors" in capsys.readouterr().err
    assert main(["eval", str(run), "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_auto_falls_back_to_the_newest_valid(trained_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    _flip(run / "checkpoints" / "step_00000004" / "trainer.safetensors", 0.5)
    logs: list[str] = []
    with pytest.warns(UserWarning, match="step_00000004"):
        result = train(tiny_config(run, steps=6), log=logs.append)
    assert any("resumed from" in line and line.endswith("step_00000002 (step 2)") for line in logs), logs
    assert result.step == 6
    assert read_state(run / "checkpoints" / "step_00000004")["step"] == 4  # rewritten from the resumed run
