from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib

import pytest
import torch

from posenc.data.tokenizers import CharTokenizer
from posenc.models import LanguageModel, LMConfig
from posenc.train.checkpoint import (
    CheckpointError, CheckpointWriteError, _restore_rng, checkpoint_dirs, latest_valid, load_checkpoint, read_state,
    save_checkpoint,
)
from posenc.train.config import ModelConfig, OptimConfig
from posenc.train.optim import build_optimizer
from posenc.train.run import build_model, check_compatible


def _trained(seed: int = 0) -> tuple[LanguageModel, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = LanguageModel(LMConfig(vocab_size=11, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32,
                                   encoding="learned"))
    opt = build_optimizer(model, OptimConfig())
    for _ in range(2):
        opt.zero_grad()
        model(torch.randint(0, 11, (2, 5))).square().mean().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_weights_ties_optimizer_and_rng(tmp_path: pathlib.Path) -> None:
    model, opt = _trained()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    path = save_checkpoint(tmp_path, step=7, model=model, optimizer=opt, state={"data_position": 7})
    assert path.name == "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "state.json", "trainer.safetensors"]
    torch.manual_seed(999)
    fresh, fresh_opt = _trained(seed=1)
    doc = load_checkpoint(path, model=fresh, optimizer=fresh_opt, restore_rng=True)
    assert doc["step"] == 7 and doc["data_position"] == 7
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.lm_head.weight is fresh.embedding.weight  # the tie survives loading
    a, b = opt.state_dict(), fresh_opt.state_dict()
    assert a["param_groups"] == [{**g, "betas": tuple(g["betas"])} for g in b["param_groups"]]
    for pid, st in a["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b["state"][pid][name]), (pid, name)
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_module_generator_is_saved_and_restored(tmp_path: pathlib.Path) -> None:
    """randomized's position sampler draws from a generator of its own: a resume continues its sequence. A
    checkpoint without that state (written before it was saved) loads with a warning naming the module."""
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=11, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32,
                                   encoding="randomized:inner=rope,max_len=40"))
    opt = build_optimizer(model, OptimConfig())
    sampler = model.stack.layers[0].self_attn.encoding
    sampler.sample(5, rows=3)  # the generator has moved on from its seed
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=opt, state={})
    expected = sampler.sample(6, rows=2)
    sampler.reset()
    assert not torch.equal(sampler.sample(6, rows=2), expected)
    load_checkpoint(path, model=model, restore_rng=True)
    assert torch.equal(sampler.sample(6, rows=2), expected)
    name = r"stack\.layers\.0\.self_attn\.encoding"
    with pytest.warns(UserWarning, match=rf"no state for the generator of {name}.*not bit-identical"):
        _restore_rng({"rng.torch": torch.get_rng_state()}, model, path)


@pytest.mark.parametrize("exchange", [True, False])
def test_a_checkpoint_of_the_same_step_is_replaced(tmp_path: pathlib.Path, exchange: bool, monkeypatch) -> None:
    """Re-writing step 5 replaces it. Where the OS swaps directories atomically, a kill right after the swap
    (here: the removal of the old one interrupted) leaves the new checkpoint valid under the final name, and the
    old one as a hidden leftover that the next save removes."""
    from posenc.train import checkpoint as ckpt

    if not exchange:
        monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    else:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        (tmp_path / "a" / "x").touch()
        if not ckpt._exchange(tmp_path / "a", tmp_path / "b"):
            pytest.skip("this OS or file system cannot swap directories atomically")
        assert (tmp_path / "b" / "x").exists() and not (tmp_path / "a" / "x").exists()
    model, opt = _trained()
    save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, state={"data_position": 1}, keep=1)
    if exchange:
        monkeypatch.setattr(ckpt.shutil, "rmtree", _interrupt_on_tmp(ckpt.shutil.rmtree))
    try:
        save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, state={"data_position": 2}, keep=1)
    except KeyboardInterrupt:
        assert exchange
    monkeypatch.undo()
    path, doc = latest_valid(tmp_path)
    assert path.name == "step_00000005" and doc["data_position"] == 2
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == ([f".step_00000005.tmp{os.getpid()}"]
                                                                          if exchange else [])


class _FakeLibc:
    """Stands in for the C library: ``renameat2`` fails with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.renameat2 = lambda *args: -1  # a function, so that argtypes and restype can be set on it


@pytest.mark.parametrize("code", ["EINVAL", "ENOSYS", "EOPNOTSUPP", "EXDEV", "EACCES"])
def test_a_swap_the_file_system_refuses(tmp_path: pathlib.Path, code: str, monkeypatch) -> None:
    """Unsupported here (EINVAL, ENOSYS, EOPNOTSUPP, EXDEV): the old checkpoint is removed first, and the new one
    is in place. Any other error: CheckpointWriteError naming the checkpoint, the old one intact, no leftover."""
    from posenc.train import checkpoint as ckpt

    model, opt = _trained()
    save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, state={"data_position": 1})
    fake = _FakeLibc(getattr(errno, code))
    monkeypatch.setattr(ckpt.ctypes, "CDLL", lambda *a, **k: fake)
    monkeypatch.setattr(ckpt.ctypes, "get_errno", lambda: fake.code)
    monkeypatch.setattr(ckpt.sys, "platform", "linux")
    if code == "EACCES":
        with pytest.raises(CheckpointWriteError, match="step_00000005"):
            save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, state={"data_position": 2})
    else:
        save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, state={"data_position": 2})
    monkeypatch.undo()
    path, doc = latest_valid(tmp_path)
    assert path.name == "step_00000005" and doc["data_position"] == (1 if code == "EACCES" else 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000005"]


def _interrupt_on_tmp(rmtree):
    def fake(path, *args, **kwargs):
        if ".tmp" in pathlib.Path(path).name and (pathlib.Path(path) / "state.json").is_file():
            raise KeyboardInterrupt  # killed while removing the swapped-out checkpoint
        return rmtree(path, *args, **kwargs)

    return fake


def test_keep_last_k(tmp_path: pathlib.Path) -> None:
    model, opt = _trained()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step=step, model=model, optimizer=opt, state={}, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000003", "step_00000004"]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path: pathlib.Path) -> None:
    """A resume that fell back past a corrupt step 3 writes step 2 again: with keep=1 the step-2 checkpoint is the
    one kept (ranking by step number alone deleted it and kept the corrupt step 3)."""
    model, opt = _trained()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step=step, model=model, optimizer=opt, state={}, keep=2)
    save_checkpoint(tmp_path, step=2, model=model, optimizer=opt, state={}, keep=1)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000002"]
    save_checkpoint(tmp_path, step=3, model=model, optimizer=opt, state={}, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000002", "step_00000003"]


def test_a_state_json_would_change_is_refused(tmp_path: pathlib.Path) -> None:
    model, opt = _trained()
    with pytest.raises(ValueError, match="must survive JSON unchanged"):  # int keys: it could never verify
        save_checkpoint(tmp_path, step=1, model=model, optimizer=opt, state={"counts": {2: 1, 10: 3}})
    assert checkpoint_dirs(tmp_path) == []


def test_corrupt_and_partial_are_skipped_with_a_warning(tmp_path: pathlib.Path) -> None:
    model, opt = _trained()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step=step, model=model, optimizer=opt, state={}, keep=0)
    root = tmp_path / "checkpoints"
    (root / ".step_00000009.tmp42").mkdir()  # a write that never finished: never listed
    blob = bytearray((root / "step_00000003" / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (root / "step_00000003" / "model.safetensors").write_bytes(bytes(blob))
    (root / "step_00000002" / "state.json").unlink()
    with pytest.warns(UserWarning) as record:
        path, state = latest_valid(tmp_path)
    assert path.name == "step_00000001" and state["step"] == 1
    messages = " | ".join(str(w.message) for w in record)
    assert "step_00000003" in messages and "sha256" in messages
    assert "step_00000002" in messages and "no state.json" in messages
    with pytest.raises(CheckpointError, match="corrupt"):
        read_state(root / "step_00000003")


def test_other_config_is_refused_naming_the_difference(tmp_path: pathlib.Path) -> None:
    tok = CharTokenizer(chars="abc")
    mc = ModelConfig(d_model=16, num_heads=2, num_layers=1, dim_feedforward=32)
    model = build_model(mc, tok)
    state = {"model_config": dataclasses.asdict(mc), "tokenizer_fingerprint": tok.fingerprint(), "vocab_size": 7}
    check_compatible(state, mc, tok, "ckpt")  # the same: accepted
    with pytest.raises(CheckpointError, match=r"model\.d_model: checkpoint 16, this run 32"):
        check_compatible(state, dataclasses.replace(mc, d_model=32), tok, "ckpt")
    with pytest.raises(CheckpointError, match=r"model\.encoding: checkpoint 'none', this run 'sinusoidal'"):
        check_compatible(state, dataclasses.replace(mc, encoding="sinusoidal"), tok, "ckpt")
    with pytest.raises(CheckpointError, match="tokenizer: checkpoint vocabulary of 7 tokens"):
        check_compatible(state, mc, CharTokenizer(chars="abd"), "ckpt")
    opt = build_optimizer(model, OptimConfig())
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=opt, state=state)
    wider = build_model(dataclasses.replace(mc, d_model=32), tok)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(path, model=wider)


def test_state_json_is_plain_json(tmp_path: pathlib.Path) -> None:
    model, opt = _trained()
    path = save_checkpoint(tmp_path, step=5, model=model, optimizer=opt, state={"loss_sum": 0.1})
    doc = json.loads((path / "state.json").read_text())
    assert doc["format"] == "posenc-checkpoint/1" and doc["loss_sum"] == 0.1
    assert set(doc["files"]) == {"model.safetensors", "trainer.safetensors"}
