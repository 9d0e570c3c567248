"""A pickle whose loading would run code (it creates a marker file), offered to every load path: refused, and the
marker never appears. And a scan of the source for ``torch.load`` without ``weights_only=True`` and pickle loads."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import pickle
import re
import shutil

import pytest
import torch
from reliability_helpers import ROOT, copy_run, tiny_config

from posenc.cli import main
from posenc.commands import COMMANDS
from posenc.data.tokenizers import load_tokenizer
from posenc.train import load_run
from posenc.train.checkpoint import _state_digest
from posenc.train.config import load_config_file, to_toml


class _Payload:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))  # runs on unpickling


def _evil_files(tmp: pathlib.Path, marker: pathlib.Path) -> dict[str, pathlib.Path]:
    raw = pickle.dumps({"state_dict": _Payload(marker)})
    buf = io.BytesIO()
    torch.save({"model": _Payload(marker)}, buf)  # torch's zip format, with the payload in data.pkl
    out = {}
    for name, data in (("evil.pt", buf.getvalue()), ("evil.pth", buf.getvalue()), ("evil.pkl", raw),
                       ("model.bin", raw)):
        out[name] = tmp / name
        out[name].write_bytes(data)
    pickle.loads(raw)  # the payload is real: loading it creates the marker ...
    assert marker.exists()
    marker.unlink()  # ... which every test below then demands stays absent
    return out


@pytest.fixture
def evil(tmp_path: pathlib.Path) -> tuple[dict[str, pathlib.Path], pathlib.Path]:
    marker = tmp_path / "PWNED"
    return _evil_files(tmp_path, marker), marker


def _planted_run(trained: pathlib.Path, dst: pathlib.Path, payload: pathlib.Path) -> pathlib.Path:
    """A run whose newest checkpoint's model file is the pickle, with every recorded checksum updated to match."""
    run = copy_run(trained, dst)
    ck = run / "checkpoints" / "step_00000004"
    shutil.copy(payload, ck / "model.safetensors")
    doc = json.loads((ck / "state.json").read_text())
    doc["files"]["model.safetensors"] = hashlib.sha256(payload.read_bytes()).hexdigest()
    doc["state_sha256"] = _state_digest(doc)
    (ck / "state.json").write_text(json.dumps(doc))
    return run


def test_every_load_path_refuses_a_pickle(
    trained_run: pathlib.Path, tmp_path: pathlib.Path, evil: tuple[dict[str, pathlib.Path], pathlib.Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    files, marker = evil
    run = copy_run(trained_run, tmp_path / "run")
    (tmp_path / "run.toml").write_text(to_toml(tiny_config(run, steps=6)))
    for f in files.values():
        assert main(["train", "--config", str(tmp_path / "run.toml"), "--resume", str(f)]) != 0
        assert main(["eval", str(run), "--checkpoint", str(f)]) != 0
        assert main(["train", "--config", str(f)]) != 0
        with pytest.raises((ValueError, OSError)):
            load_run(run, checkpoint=f)
        with pytest.raises(ValueError):
            load_tokenizer(f)
        with pytest.raises(ValueError):
            load_config_file(f)
        assert not marker.exists(), f"loading {f.name} ran its payload"
    err = capsys.readouterr().err
    assert "is a file, not a checkpoint directory" in err


def test_a_pickle_planted_inside_a_checkpoint_is_refused(
    trained_run: pathlib.Path, tmp_path: pathlib.Path, evil: tuple[dict[str, pathlib.Path], pathlib.Path],
) -> None:
    files, marker = evil
    for i, f in enumerate(files.values()):
        run = _planted_run(trained_run, tmp_path / f"run{i}", f)
        bad = run / "checkpoints" / "step_00000004"
        assert main(["eval", str(run), "--checkpoint", str(bad)]) == 2
        with pytest.raises(ValueError, match="does not fit this model"):
            load_run(run, checkpoint=bad)
        shutil.copy(f, run / "config.json")
        assert main(["eval", str(run)]) == 2
        assert not marker.exists(), f"loading {f.name} ran its payload"


@pytest.mark.parametrize("command", ["generate", "translate"])
def test_generation_commands_refuse_a_pickle(
    tmp_path: pathlib.Path, evil: tuple[dict[str, pathlib.Path], pathlib.Path], command: str
) -> None:
    if command not in COMMANDS:
        pytest.skip(f"posenc {command} is not in this checkout")
    files, marker = evil
    fake_run = tmp_path / "fake_run"
    fake_run.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(files["evil.pkl"], fake_run / name)
    for target in (fake_run, *files.values()):
        try:
            code = main([command, str(target), "hello"])
        except SystemExit as exit_:  # argparse: another argument layout
            code = exit_.code
        assert code != 0
    assert not marker.exists()


def _calls(source: str, name: str) -> list[str]:
    """The text of every call ``name(...)`` in ``source`` (balanced parentheses)."""
    out = []
    for m in re.finditer(re.escape(name) + r"\s*\(", source):
        depth, i = 0, m.end() - 1
        while i < len(source):
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            if depth == 0:
                break
            i += 1
        out.append(source[m.start() : i + 1])
    return out


def test_calls_finds_nested_arguments() -> None:
    src = "x = torch.load(open(p), map_location=f(a))\ny = torch.load(p, weights_only=True)"
    assert _calls(src, "torch.load") == ["torch.load(open(p), map_location=f(a))", "torch.load(p, weights_only=True)"]


def test_source_never_unpickles() -> None:
    offenders = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path}: {c}" for c in _calls(text, "torch.load") if "weights_only=True" not in c]
        offenders += [f"{path}: {c}" for n in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load",
                                               "dill.load", "joblib.load") for c in _calls(text, n)]
        offenders += [f"{path}: {c}" for c in _calls(text, "np.load") + _calls(text, "numpy.load")
                      if "allow_pickle=True" in c]
        offenders += [f"{path}: import of pickle" for _ in re.finditer(r"^\s*(import|from)\s+(c?pickle|dill)\b", text,
                                                                        re.M)]
    assert offenders == []
