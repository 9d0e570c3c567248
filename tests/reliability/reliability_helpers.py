"""Shared pieces of the reliability tests: a tiny run config, a trained tiny run, subprocess runners."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

from posenc.train import RunConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(run_dir: pathlib.Path | str, *, steps: int = 4, checkpoint_every: int = 2) -> RunConfig:
    """A run that trains in about a second on one core: copy task, width 16, one layer."""
    cfg = RunConfig()
    cfg.model.d_model, cfg.model.num_heads, cfg.model.num_layers, cfg.model.dim_feedforward = 16, 2, 1, 32
    cfg.data.task, cfg.data.batch_size, cfg.data.train_lengths, cfg.data.test_lengths = "copy", 4, [1, 4], [5, 6]
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.train.log_every = (
        steps, checkpoint_every, 0, 1)
    cfg.train.run_dir, cfg.train.device, cfg.train.threads, cfg.train.progress = str(run_dir), "cpu", 1, "off"
    cfg.eval.every, cfg.eval.examples, cfg.eval.batch_size = 0, 8, 8
    cfg.optim.warmup_steps = 1
    return cfg


def copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


def run_python(code: str, *args: str, optimize: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python [-O] -c code args...`` with this checkout's ``src`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, *(["-O"] if optimize else []), "-c", code, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


TRAIN_SCRIPT = """
import json, os, signal, sys
from posenc.train import train
from posenc.train.config import run_config_from_dict
cfg = run_config_from_dict(json.load(open(sys.argv[1])))
kill_at = int(sys.argv[2])
exec(sys.argv[3] if len(sys.argv) > 3 else "")  # a fault to inject (tests only)

def on_step(step, info):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

train(cfg, on_step=on_step, log=lambda s: None)
"""


def train_subprocess(cfg_json: pathlib.Path, *, kill_at: int = 0, inject: str = "") -> subprocess.CompletedProcess:
    """Train the config in ``cfg_json`` in a fresh process, SIGKILLed after step ``kill_at`` (0: never)."""
    return run_python(TRAIN_SCRIPT, str(cfg_json), str(kill_at), inject)
