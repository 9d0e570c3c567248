"""A loss that turns NaN or inf: ``train.nonfinite = "stop"`` (the default) stops naming the step and leaves the last
checkpoint intact; ``"skip"`` drops the step, leaving weights and optimizer state exactly as they were."""

from __future__ import annotations

import copy
import hashlib
import math
import pathlib

import pytest
import torch
from reliability_helpers import tiny_config

import posenc.train.loop as loop
from posenc.cli import main
from posenc.train import train
from posenc.train.checkpoint import read_state
from posenc.train.config import to_toml
from posenc.train.faults import NonFiniteLossError


def _inject(monkeypatch: pytest.MonkeyPatch, at_call: int, value: float) -> None:
    """Make the loss of the ``at_call``-th training batch NaN or inf (the graph stays, so backward runs)."""
    real, calls = loop.token_loss, [0]

    def fake(logits: torch.Tensor, targets: torch.Tensor, **kw: object) -> torch.Tensor:
        calls[0] += 1
        out = real(logits, targets, **kw)
        return out * value if calls[0] == at_call else out

    monkeypatch.setattr(loop, "token_loss", fake)


def _digests(ckpt: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ckpt.iterdir())}


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_stop_names_the_step_and_keeps_the_last_checkpoint(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, value: float
) -> None:
    cfg = tiny_config(tmp_path / "run", steps=6, checkpoint_every=2)
    step2 = tmp_path / "run" / "checkpoints" / "step_00000002"
    seen: dict[str, dict[str, str]] = {}

    def on_step(step: int, info: dict[str, float]) -> None:
        if step == 2:
            seen["before"] = _digests(step2)

    _inject(monkeypatch, at_call=3, value=value)
    with pytest.raises(NonFiniteLossError, match=r"^step 3: loss (nan|inf).*step_00000002 \(step 2\), is intact"):
        train(cfg, on_step=on_step, log=lambda s: None)
    assert _digests(step2) == seen["before"]
    assert read_state(step2)["step"] == 2
    assert sorted(p.name for p in step2.parent.iterdir()) == ["step_00000002"]


def test_skip_leaves_weights_and_optimizer_unchanged(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path / "run", steps=4, checkpoint_every=4)
    cfg.train.nonfinite = "skip"
    captured: dict[int, tuple[dict[str, torch.Tensor], dict]] = {}
    real_update = loop._update

    def spy(s: loop._Setup, *a: object, **k: object) -> tuple[float, float, int]:
        out = real_update(s, *a, **k)
        captured[len(captured) + 1] = (copy.deepcopy(s.model.state_dict()), copy.deepcopy(s.optimizer.state_dict()))
        return out

    monkeypatch.setattr(loop, "_update", spy)
    _inject(monkeypatch, at_call=3, value=math.nan)
    logs: list[str] = []
    result = train(cfg, log=logs.append)
    assert result.step == 4
    assert any(line.startswith("step 3: loss nan") and "skipped" in line for line in logs), logs
    (w2, o2), (w3, o3), (w4, _) = captured[2], captured[3], captured[4]
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # the skipped step changed no weight ...
    assert o2["state"].keys() == o3["state"].keys()
    for pid, st in o2["state"].items():  # ... and no optimizer moment or step count
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(o3["state"][pid][name])), (pid, name)
    assert not all(torch.equal(w3[k], w4[k]) for k in w3)  # the next, finite step does train
    assert all(bool(torch.isfinite(v).all()) for v in w4.values())


def test_learning_rate_1e6_stops_the_cli_with_exit_1(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(tmp_path / "run", steps=6, checkpoint_every=1)
    cfg.optim.lr, cfg.optim.schedule = 1e6, "constant"
    (tmp_path / "run.toml").write_text(to_toml(cfg))
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 1
    err = capsys.readouterr().err
    assert "NonFiniteLossError: step " in err and "is intact" in err
    last = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    assert str(last) in err
    state = read_state(last)  # the checkpoint it names verifies and holds finite weights only
    from safetensors.torch import load_file

    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(last / "model.safetensors")).values())
    assert state["step"] == int(last.name[5:])
