"""Every user-input check still fires under ``python -O`` (which strips ``assert``)."""

from __future__ import annotations

import json

import pytest
from reliability_helpers import run_python

SCRIPT = r'''
import json, pathlib, sys, tempfile, warnings
import torch
assert False, "asserts must be stripped: this runs under -O"
from posenc.models import LanguageModel, LMConfig
from posenc.data.tokenizers import CharTokenizer
from posenc.data.text import TextDataset
from posenc.train import RunConfig, train
from posenc.train.checkpoint import read_state
from posenc.train.config import run_config_from_dict
from posenc.train.run import check_compatible

tmp = pathlib.Path(tempfile.mkdtemp())
lm = LanguageModel(LMConfig(vocab_size=10, d_model=8, num_heads=2, num_layers=1, dim_feedforward=16,
                            encoding="learned:max_len=4"))
tok = CharTokenizer(chars="abc")
(tmp / "ck").mkdir(); (tmp / "ck" / "state.json").write_text('{"format": "posenc-checkpoint/1", "step": 1}')
(tmp / "bad.txt").write_bytes(b"ok\n\xff\n")
bad_cfg = RunConfig(); bad_cfg.train.nonfinite = "ignore"; bad_cfg.train.run_dir = str(tmp / "r")
checks = {
    "learned table": lambda: lm(torch.zeros(1, 5, dtype=torch.long)),
    "id >= vocab": lambda: lm(torch.tensor([[1, 10]])),
    "id < 0": lambda: lm(torch.tensor([[-1, 1]])),
    "float ids": lambda: lm(torch.tensor([[1.0, 2.0]])),
    "decode id": lambda: tok.decode([99]),
    "tokenizer drift": lambda: check_compatible({"model_config": {}, "tokenizer_fingerprint": "x"},
                                                RunConfig().model, tok, "ck"),
    "checkpoint checksum": lambda: read_state(tmp / "ck"),
    "checkpoint is a file": lambda: read_state(tmp / "bad.txt"),
    "config key": lambda: run_config_from_dict({"train": {"stepz": 3}}),
    "config type": lambda: run_config_from_dict({"train": {"steps": "many"}}),
    "nonfinite policy": lambda: train(bad_cfg, log=lambda s: None),
    "text utf-8": lambda: TextDataset(path=tmp / "bad.txt", block_size=1),
    "block size": lambda: TextDataset(path=tmp / "bad.txt", block_size=0),
}
out = {}
for name, fn in checks.items():
    try:
        fn()
        out[name] = "no error"
    except (ValueError, TypeError) as err:
        out[name] = type(err).__name__
print(json.dumps({"optimize": sys.flags.optimize, "results": out}))
'''


@pytest.mark.slow
def test_checks_fire_under_python_O() -> None:
    proc = run_python(SCRIPT, optimize=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["optimize"] == 1
    assert {k: v for k, v in doc["results"].items() if v == "no error"} == {}
    assert len(doc["results"]) == 13
