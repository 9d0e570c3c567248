"""torchrun on CPU (gloo): two processes must train what one process trains, and survive a killed rank."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from posenc.data.batch import Batch
from posenc.train.config import load_config_file
from posenc.train.distributed import Parallel, check_global_batch, shard_batch
from posenc.train.loop import train

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A small reverse task; dropout 0, so the only difference between one and two processes is the order of
# floating-point sums. optim.eps = 1e-6: the key bias of attention has an exactly zero gradient (softmax ignores
# a constant added to every score), so its "gradient" is rounding noise, which Adam with eps = 1e-9 would
# normalize into full-size steps of +-lr that differ between any two summation orders.
CONFIG = {
    "model": {"d_model": 32, "num_layers": 2, "dim_feedforward": 64, "dropout": 0.0},
    "data": {"task": "reverse", "batch_size": 8, "train_lengths": [1, 6], "test_lengths": [7, 9]},
    "optim": {"schedule": "constant", "warmup_steps": 3, "eps": 1e-6},
    "train": {"steps": 12, "checkpoint_every": 4, "keep_checkpoints": 0, "log_every": 1, "progress": "off",
              "threads": 1},
    "eval": {"every": 4, "examples": 17, "batch_size": 8},  # batches of 8, 8, 1: one rank gets no row of the last
}

KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from posenc.train.config import load_config_file
    from posenc.train.loop import train
    cfg = load_config_file(sys.argv[1])
    cfg.train.run_dir, cfg.train.steps = sys.argv[2], int(sys.argv[3])
    kill_at = int(sys.argv[4])
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    def on_step(step, info):
        if step == kill_at and first_attempt and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)

    train(cfg, on_step=on_step, log=print)
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str, restarts: int = 0) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "--max-restarts", str(restarts), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """One process for 12 steps; two processes (DDP, FSDP) for 8 steps, launched through ``-m posenc train``."""
    root = tmp_path_factory.mktemp("dist")
    cfg_file = root / "config.json"
    cfg_file.write_text(json.dumps(CONFIG))
    cfg = load_config_file(cfg_file)
    cfg.train.run_dir = str(root / "one")
    train(cfg, log=lambda _: None)
    for mode in ("ddp", "fsdp"):
        _ok(_torchrun("-m", "posenc", "train", "--config", str(cfg_file), "--steps", "8",
                      "--run-dir", str(root / mode), "--parallel", mode))
    return {"root": root, "config": cfg_file, "one": root / "one", "ddp": root / "ddp", "fsdp": root / "fsdp"}


def _rows(run: pathlib.Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def _tensors(run: pathlib.Path, step: int, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors"))


def _assert_same_state(a: pathlib.Path, b: pathlib.Path, step: int) -> None:
    for name in ("model", "trainer"):
        ta, tb = _tensors(a, step, name), _tensors(b, step, name)
        assert ta.keys() == tb.keys(), name
        for k in ta:
            if not k.startswith("rng."):
                torch.testing.assert_close(tb[k], ta[k], rtol=1e-4, atol=1e-5, msg=f"{name}:{k}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(runs: dict[str, pathlib.Path], mode: str) -> None:
    one = {(r["step"], r["split"]): r for r in _rows(runs["one"]) if int(r["step"]) <= 8}
    two = {(r["step"], r["split"]): r for r in _rows(runs[mode])}
    assert two.keys() == one.keys()  # rank 0 alone wrote: each row once
    assert sum(1 for k in two if k[1] == "train") == 8
    for key, r in one.items():
        assert two[key]["tokens"] == r["tokens"], key  # the shards add up to the one-process batch / eval set
        for col in ("loss", "token_acc", "exact_match", "grad_norm"):
            if r[col]:
                assert float(two[key][col]) == pytest.approx(float(r[col]), rel=1e-5, abs=1e-7), (key, col)
    _assert_same_state(runs["one"], runs[mode], 8)
    assert json.loads((runs[mode] / "config.json").read_text())["train"]["parallel"] == mode


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_checkpoint_resumes_in_one(runs: dict[str, pathlib.Path], mode: str,
                                               tmp_path: pathlib.Path) -> None:
    run = tmp_path / mode
    shutil.copytree(runs[mode], run)
    cfg = load_config_file(runs["config"])
    cfg.train.run_dir = str(run)
    lines: list[str] = []
    result = train(cfg, log=lines.append)
    assert result.step == 12
    assert any("resumed from" in ln and "step 8" in ln for ln in lines), lines
    _assert_same_state(runs["one"], run, 12)


@pytest.mark.slow
def test_killed_rank_stops_the_job_and_a_relaunch_resumes(runs: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    run = tmp_path / "killed"
    args = (str(script), str(runs["config"]), str(run), "8")
    first = _torchrun(*args, "6")  # rank 1 SIGKILLs itself after step 6: checkpoint 4 exists, 8 does not
    assert first.returncode != 0
    assert f"exitcode  : {-signal.SIGKILL}" in first.stderr, first.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004"]
    out = _ok(_torchrun(*args, "0"))
    assert "resumed from" in out and "(step 4)" in out
    _assert_same_state(runs["ddp"], run, 8)
    steps = [(r["step"], r["split"]) for r in _rows(run)]
    assert len(steps) == len(set(steps)) and [s for s, split in steps if split == "train"] == [str(i) for i in range(1, 9)]


@pytest.mark.slow
def test_torchrun_restart_resumes_from_newest_checkpoint(runs: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    run = tmp_path / "restarted"
    out = _ok(_torchrun(str(script), str(runs["config"]), str(run), "8", "6", restarts=1))
    assert "resumed from" in out and "(step 4)" in out
    _assert_same_state(runs["ddp"], run, 8)


def _batch(rows: int) -> Batch:
    x = torch.arange(rows * 3).reshape(rows, 3)
    return Batch(inputs=x, targets=x + 100, src=x + 200, lengths=torch.arange(rows))


def test_shards_are_disjoint_and_cover_the_global_batch() -> None:
    b = _batch(6)
    parts = [shard_batch(b, rank=r, world=3) for r in range(3)]
    assert [p.lengths.tolist() for p in parts] == [[0, 3], [1, 4], [2, 5]]
    for p in parts:
        assert torch.equal(p.targets, p.inputs + 100) and torch.equal(p.src, p.inputs + 200)
    assert sorted(torch.cat([p.inputs for p in parts]).flatten().tolist()) == list(range(18))


def test_a_global_batch_that_does_not_divide_is_an_error() -> None:
    with pytest.raises(ValueError, match="data.batch_size 6 \\(the global batch\\) does not divide among 4"):
        check_global_batch(6, 4)
    check_global_batch(8, 4)
    with pytest.raises(ValueError, match="global batch of 3 rows cannot feed 4 processes"):
        shard_batch(_batch(3), rank=0, world=4)
    assert [shard_batch(_batch(5), rank=r, world=2).size for r in (0, 1)] == [3, 2]  # token buckets: uneven, exact


@pytest.mark.slow
def test_two_process_run_rejects_an_indivisible_batch(runs: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    proc = _torchrun("-m", "posenc", "train", "--config", str(runs["config"]), "--data.batch_size", "7",
                     "--run-dir", str(tmp_path / "bad"))
    assert proc.returncode != 0
    assert "data.batch_size 7 (the global batch) does not divide among 2 processes" in proc.stderr


@pytest.mark.slow
def test_ddp_checkpoint_resumes_under_fsdp(runs: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    """Two processes resume a DDP checkpoint sharded with FSDP (the full optimizer state is scattered)."""
    run = tmp_path / "ddp-then-fsdp"
    shutil.copytree(runs["ddp"], run)
    out = _ok(_torchrun("-m", "posenc", "train", "--config", str(runs["config"]), "--run-dir", str(run),
                        "--parallel", "fsdp"))
    assert "(step 8)" in out
    _assert_same_state(runs["one"], run, 12)


def test_one_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    par, device = Parallel.start(mode="fsdp", timeout_s=60, device=torch.device("cpu"))
    assert (par.world, par.rank, par.active, par.is_main, device) == (1, 0, False, True, torch.device("cpu"))
    assert par.sum([1.5, 2.0]) == [1.5, 2.0]
    with pytest.raises(ValueError, match="train.parallel must be one of ddp, fsdp, got 'zero'"):
        Parallel.start(mode="zero", timeout_s=60, device=torch.device("cpu"))
    for bad in (0, float("nan")):
        with pytest.raises(ValueError, match=rf"train.dist_timeout \(seconds\) must be a finite number > 0, got {bad}"):
            Parallel.start(mode="ddp", timeout_s=bad, device=torch.device("cpu"))
