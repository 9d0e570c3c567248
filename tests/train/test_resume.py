"""Kill a run with SIGKILL between checkpoints, resume it, and demand a bit-identical end."""

from __future__ import annotations

import csv
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from posenc.train import RunConfig, train
    cfg = RunConfig()
    cfg.model.d_model, cfg.model.num_layers, cfg.model.dim_feedforward, cfg.model.dropout = 32, 2, 64, 0.1
    cfg.data.task, cfg.data.batch_size, cfg.data.train_lengths, cfg.data.test_lengths = "reverse", 8, [1, 6], [7, 9]
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.train.log_every = 12, 4, 2, 1
    cfg.train.precision, cfg.train.threads, cfg.train.run_dir = "fp32", 1, sys.argv[1]
    cfg.model.encoding = sys.argv[3]
    cfg.eval.every, cfg.eval.examples = 6, 16
    cfg.optim.warmup_steps, cfg.optim.label_smoothing = 3, 0.1
    kill_at = int(sys.argv[2])

    def on_step(step, info):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(cfg, on_step=on_step, log=lambda s: None)
""")


def _run(run_dir: pathlib.Path, kill_at: int, encoding: str = "none") -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(run_dir), str(kill_at), encoding], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr)
    return proc.returncode


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(path.open()))
    for r in rows:
        r.pop("elapsed_s", None)  # wall-clock and CPU time are the columns that may differ
        r.pop("cpu_s", None)
    return rows


def _tensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["none", "randomized:inner=rope,max_len=64"])
def test_sigkill_and_resume_is_bit_identical(tmp_path: pathlib.Path, encoding: str) -> None:
    """Also with randomized positions, whose sampler owns a generator: its state is in the checkpoint too."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _run(whole, kill_at=0, encoding=encoding) == 0
    assert _run(killed, kill_at=10, encoding=encoding) == -signal.SIGKILL  # dies after checkpoint 8, before 12
    ckpts = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert ckpts == ["step_00000004", "step_00000008"]
    assert _run(killed, kill_at=0, encoding=encoding) == 0  # --resume auto: continues from step 8
    for name in ("model.safetensors", "trainer.safetensors"):
        a = _tensors(whole / "checkpoints" / "step_00000012" / name)
        b = _tensors(killed / "checkpoints" / "step_00000012" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    assert _rows(whole / "metrics.csv") == _rows(killed / "metrics.csv")
    assert (whole / "eval_lengths.csv").read_text() == (killed / "eval_lengths.csv").read_text()
    train_rows = [r for r in _rows(whole / "metrics.csv") if r["split"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 13))
    # the resumed process really started at step 8: its first new row is step 9, and nothing was logged twice
    steps = [(r["step"], r["split"]) for r in _rows(killed / "metrics.csv")]
    assert len(steps) == len(set(steps))
