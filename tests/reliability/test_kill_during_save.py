"""SIGKILL while a checkpoint is being written: the previous checkpoint stays loadable, no partial checkpoint ever
carries a final name, and a resume ignores (and clears) the leftovers and ends bit-identical."""

from __future__ import annotations

import pathlib
import signal

import pytest
import torch
from reliability_helpers import tiny_config, train_subprocess
from safetensors.torch import load_file

from posenc.train import load_run, train
from posenc.train.checkpoint import checkpoint_dirs, read_state

# Each hook lets the first save (step 2) through and kills the process inside the second one (step 4).
HALF_WRITE = """
import posenc.train.checkpoint as ck
_real, _calls = ck.{fn}, [0]
def _half(obj, path, *a, **k):
    _calls[0] += 1
    _real(obj, path, *a, **k)
    if _calls[0] == 2:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
ck.{fn} = _half
"""
BEFORE_RENAME = """
import posenc.train.checkpoint as ck
_real_rename = ck.os.rename
def _rename(a, b):
    if str(b).endswith("step_00000004"):
        os.kill(os.getpid(), signal.SIGKILL)
    _real_rename(a, b)
ck.os.rename = _rename
"""
HOOKS = {
    "model file half written": HALF_WRITE.format(fn="save_model"),
    "trainer file half written": HALF_WRITE.format(fn="save_file"),
    "complete but not renamed": BEFORE_RENAME,
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    run = tmp_path_factory.mktemp("whole") / "run"
    train(tiny_config(run, steps=6), log=lambda s: None)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("hook", list(HOOKS))
def test_kill_inside_a_save(tmp_path: pathlib.Path, uninterrupted: pathlib.Path, hook: str) -> None:
    run = tmp_path / "run"
    cfg_json = tmp_path / "cfg.json"
    cfg_json.write_text(tiny_config(run, steps=6).to_json())
    proc = train_subprocess(cfg_json, inject=HOOKS[hook])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    root = run / "checkpoints"
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000002"]  # no partial one under a final name
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".step_00000004.tmp"), leftovers
    assert read_state(root / "step_00000002")["step"] == 2
    model, _, _ = load_run(run)  # the previous checkpoint is loadable
    assert not model.training
    train(tiny_config(run, steps=6), log=lambda s: None)  # resume: ignores the leftover, then removes it
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    for name in ("model.safetensors", "trainer.safetensors"):
        a = load_file(str(uninterrupted / "checkpoints" / "step_00000006" / name))
        b = load_file(str(root / "step_00000006" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
