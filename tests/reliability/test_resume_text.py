"""Kill-and-resume on a text file (which has epochs): SIGKILL at an epoch boundary and at a seeded random step
inside an epoch, resume with ``--resume auto``; weights, optimizer state and logged losses equal the
uninterrupted run exactly."""

from __future__ import annotations

import csv
import pathlib
import random
import signal

import pytest
import torch
from reliability_helpers import train_subprocess
from safetensors.torch import load_file

from posenc.train import RunConfig, train

BATCH, BLOCK = 4, 8
TEXT = "".join(f"line {i}: the quick brown fox {'jumps' if i % 3 else 'naps'} over dog {i * 7 % 13}.\n"
               for i in range(12))


def _config(run: pathlib.Path, text: pathlib.Path) -> RunConfig:
    cfg = RunConfig()
    cfg.model.d_model, cfg.model.num_heads, cfg.model.num_layers, cfg.model.dim_feedforward = 16, 2, 1, 32
    cfg.model.dropout, cfg.model.encoding = 0.1, "sinusoidal"  # dropout: the RNG state must resume too
    cfg.data.kind, cfg.data.path, cfg.data.block_size, cfg.data.batch_size = "text", str(text), BLOCK, BATCH
    cfg.train.run_dir, cfg.train.device, cfg.train.threads, cfg.train.progress = str(run), "cpu", 1, "off"
    cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.train.log_every = 3, 0, 1
    cfg.eval.every, cfg.eval.max_blocks, cfg.optim.warmup_steps = 5, 4, 2
    return cfg


def _steps_per_epoch(text: str) -> int:
    """Training tokens / tokens per batch: one pass over the training part (the char tokenizer: 1 token/char)."""
    return int(len(text) * 0.9) // (BATCH * BLOCK)


def _rows(run: pathlib.Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("elapsed_s", None), r.pop("cpu_s", None)  # the clocks are the only columns that may differ
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path, int]:
    root = tmp_path_factory.mktemp("text")
    text = root / "corpus.txt"
    text.write_text(TEXT, encoding="utf-8")
    epoch = _steps_per_epoch(TEXT)
    whole = root / "whole"
    cfg = _config(whole, text)
    cfg.train.steps = 2 * epoch + 2
    train(cfg, log=lambda s: None)
    return text, whole, epoch


def _kill_points(epoch: int) -> dict[str, int]:
    rng = random.Random(9)  # seeded: the same "random" step on every run of the suite
    mid = rng.choice([s for s in range(epoch + 1, 2 * epoch) if s % 3])  # second epoch, not a checkpoint step
    return {"epoch boundary": epoch, "mid-epoch": mid}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["epoch boundary", "mid-epoch"])
def test_sigkill_and_resume_on_text_is_bit_identical(
    tmp_path: pathlib.Path, setup: tuple[pathlib.Path, pathlib.Path, int], where: str
) -> None:
    text, whole, epoch = setup
    kill_at = _kill_points(epoch)[where]
    killed = tmp_path / "killed"
    cfg = _config(killed, text)
    cfg.train.steps = 2 * epoch + 2
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    proc = train_subprocess(tmp_path / "cfg.json", kill_at=kill_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    last_ckpt = max(int(p.name[5:]) for p in (killed / "checkpoints").iterdir())
    assert last_ckpt == kill_at // 3 * 3  # it really died between checkpoints (or right after one)
    train(cfg, log=lambda s: None)  # resume
    final = f"step_{cfg.train.steps:08d}"
    for name in ("model.safetensors", "trainer.safetensors"):
        a = load_file(str(whole / "checkpoints" / final / name))
        b = load_file(str(killed / "checkpoints" / final / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after a kill at step {kill_at} ({where})"
    assert _rows(whole) == _rows(killed)
    losses = [r["loss"] for r in _rows(killed) if r["split"] == "train"]
    assert len(losses) == cfg.train.steps  # every step logged exactly once, none twice
