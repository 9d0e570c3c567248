"""Running out of disk or memory: a clear message naming the step and the last checkpoint, which stays intact."""

from __future__ import annotations

import errno
import pathlib
import re
import sys

import pytest
from reliability_helpers import run_python, tiny_config

import posenc.train.checkpoint as ck
from posenc.cli import main
from posenc.train import load_run, train
from posenc.train.checkpoint import CheckpointWriteError, checkpoint_dirs, read_state, save_checkpoint
from posenc.train.config import to_toml
from posenc.train.faults import TrainingError


def _disk_full_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    real, calls = ck.save_file, [0]

    def full(tensors: dict, path: str, *a: object, **k: object) -> None:
        calls[0] += 1
        if calls[0] == n:
            with open(path, "wb") as f:  # a partial file first, as a real full disk leaves
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", full)


def test_full_disk_stops_with_a_clear_message(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    _disk_full_on_call(monkeypatch, 2)
    with pytest.raises(TrainingError, match=r"^step 4: could not write the checkpoint .*No space left on device.*"
                                            r"step_00000002 \(step 2\), is intact"):
        train(tiny_config(run, steps=6), log=lambda s: None)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]  # no temporary leftovers
    assert read_state(run / "checkpoints" / "step_00000002")["step"] == 2
    load_run(run)


def test_full_disk_library_error_and_cli_exit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _disk_full_on_call(monkeypatch, 1)
    import torch

    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(tmp_path / "lib", step=1, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        state={})
    assert info.value.errno == errno.ENOSPC and "step_00000001" in str(info.value)
    assert list((tmp_path / "lib" / "checkpoints").iterdir()) == []
    _disk_full_on_call(monkeypatch, 1)
    (tmp_path / "run.toml").write_text(to_toml(tiny_config(tmp_path / "run", steps=2)))
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "no checkpoint has been written" in err


MEMORY_SCRIPT = """
import resource, sys
from posenc.train import train
from posenc.train.faults import TrainingError
from posenc.train.config import run_config_from_dict
import json
cfg = run_config_from_dict(json.load(open(sys.argv[1])))

def vm_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()

def on_step(step, info):
    if step == 2:  # from now on, no more than 1 MiB of new address space: a later step cannot fit
        limit = vm_bytes() + (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

try:
    train(cfg, on_step=on_step, log=lambda s: None)
except TrainingError as err:
    print(err)
    sys.exit(1)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_memory_limit_stops_with_a_clear_message(tmp_path: pathlib.Path) -> None:
    """Each step's feed-forward activations (64 sequences padded to 50-62 tokens, width 4096: 52-65 MB) lie above the
    largest block glibc serves from its heap (32 MiB), so every step maps them afresh and the first step after the
    limit fails for certain. With smaller blocks freed memory the heap kept could carry the steps past the limit."""
    cfg = tiny_config(tmp_path / "run", steps=10)
    cfg.model.d_model, cfg.model.dim_feedforward, cfg.model.num_layers = 64, 4096, 2
    cfg.data.batch_size, cfg.data.train_lengths = 64, [24, 30]
    cfg.train.reuse_memory = False  # glibc's own thresholds, as a user who turned it off has them
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    proc = run_python(MEMORY_SCRIPT, str(tmp_path / "cfg.json"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = re.match(r"out of memory at step (\d+) \(.*can't allocate memory.*\); "
                     r"the last checkpoint, (.*) \(step (\d+)\), is intact", proc.stdout)
    assert found is not None, proc.stdout
    failed, named, kept = int(found.group(1)), pathlib.Path(found.group(2)), int(found.group(3))
    assert failed == 3 and kept == 2
    assert checkpoint_dirs(tmp_path / "run")[-1] == named and read_state(named)["step"] == kept


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_memory_limit_with_freed_memory_reused_is_named_where_it_bites(tmp_path: pathlib.Path) -> None:
    """With freed memory kept (the default) the steps may fit in what earlier ones freed; wherever the limit bites,
    a training step or the final evaluation, inside torch's allocator or oneDNN's, the message says memory.
    The evaluation is made to need more than the limit allows (a 64 MB feed-forward block, above the 32 MiB that
    come from the heap), so that the limit bites somewhere."""
    cfg = tiny_config(tmp_path / "run", steps=10)
    cfg.model.d_model, cfg.model.dim_feedforward, cfg.model.num_layers = 64, 1024, 2
    cfg.data.batch_size, cfg.data.train_lengths = 64, [24, 30]
    cfg.data.test_lengths, cfg.eval.examples, cfg.eval.batch_size = [60, 60], 256, 256
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    proc = run_python(MEMORY_SCRIPT, str(tmp_path / "cfg.json"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = re.match(r"out of memory at step (\d+) \(.*(can't allocate memory|could not create a primitive).*\); "
                     r"the last checkpoint, (.*) \(step (\d+)\), is intact", proc.stdout)
    assert found is not None, proc.stdout + proc.stderr[-2000:]
    failed, named, kept = int(found.group(1)), pathlib.Path(found.group(3)), int(found.group(4))
    assert 2 < failed <= 10 and kept <= failed and kept % 2 == 0
    assert checkpoint_dirs(tmp_path / "run")[-1] == named and read_state(named)["step"] == kept


ONEDNN_SCRIPT = """
import resource
from posenc.train.faults import _is_out_of_memory
err = RuntimeError("could not create a primitive")
before = _is_out_of_memory(err)
with open("/proc/self/statm") as f:
    size = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (16 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
print(before, _is_out_of_memory(err), _is_out_of_memory(RuntimeError("could not create a descriptor")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_failed_onednn_primitive_is_out_of_memory_only_near_the_address_space_limit() -> None:
    proc = run_python(ONEDNN_SCRIPT)
    assert proc.stdout.split() == ["False", "True", "False"], proc.stdout + proc.stderr
