"""Lengths and ids: past a learned table is a ValueError naming both numbers; every other registered encoding runs
past the training length; out-of-range ids are refused before any kernel runs; a tokenizer that does not match the
checkpoint is refused at load."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from reliability_helpers import copy_run, tiny_config

from posenc import encodings
from posenc.data.tokenizers import CharTokenizer
from posenc.models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig
from posenc.train import load_run, train
from posenc.train.checkpoint import CheckpointError


def _lm(encoding: str, vocab: int = 13) -> LanguageModel:
    return LanguageModel(LMConfig(vocab_size=vocab, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32,
                                  dropout=0.0, encoding=encoding))


def test_learned_table_overflow_names_both_numbers() -> None:
    model = _lm("learned:max_len=8")
    model(torch.randint(0, 13, (2, 8)))  # exactly the table: fine
    with pytest.raises(ValueError, match=r"max_len=8.*length 9|length 9.*8") as info:
        model(torch.randint(0, 13, (2, 9)))
    assert "8" in str(info.value) and "9" in str(info.value)


@pytest.mark.parametrize("name", [n for n in encodings.names() if n != "learned"])
def test_other_encodings_run_past_the_training_length(tmp_path: pathlib.Path, name: str) -> None:
    cfg = tiny_config(tmp_path / "run", steps=2, checkpoint_every=2)
    cfg.model.encoding = name
    train(cfg, log=lambda s: None)  # trained on sequences of at most 2 * 4 + 2 tokens
    model, tok, _ = load_run(tmp_path / "run")
    with torch.no_grad():
        logits = model(torch.randint(4, tok.vocab_size, (1, 300)))  # 30 times longer
    assert logits.shape == (1, 300, tok.vocab_size) and bool(torch.isfinite(logits).all())


def _no_kernel(module: torch.nn.Module) -> list[str]:
    """Record every module forward that starts (the embedding lookup is the first kernel of a model)."""
    called: list[str] = []
    for name, m in module.named_modules():
        m.register_forward_pre_hook(lambda mod, args, name=name: called.append(name))
    return called


@pytest.mark.parametrize("bad", [13, 100, -1])
def test_out_of_range_ids_are_refused_before_any_kernel(bad: int) -> None:
    model = _lm("sinusoidal")
    called = _no_kernel(model.embedding)
    ids = torch.tensor([[1, 2, bad, 3]])
    with pytest.raises(ValueError, match=rf"id {bad} .*\[0, 13\)"):
        model(ids)
    assert called == []
    s2s = Seq2Seq(Seq2SeqConfig(src_vocab_size=13, tgt_vocab_size=9, d_model=16, num_heads=2, num_encoder_layers=1,
                                num_decoder_layers=1, dim_feedforward=32))
    called = _no_kernel(s2s)
    with pytest.raises(ValueError, match="src holds id"):
        s2s(ids, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"tgt holds id .*\[0, 9\)"):
        s2s(torch.tensor([[1, 2]]), torch.tensor([[1, 9 if bad >= 0 else -1]]))
    assert [c for c in called if c.startswith(("decoder", "tgt", "out"))] == []


def test_mismatched_tokenizer_is_refused_at_load(trained_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    saved = json.loads((run / "tokenizer.json").read_text())
    swapped = CharTokenizer(chars=saved["chars"][::-1], extra_specials=saved["specials"][4:])  # same size, other ids
    assert swapped.vocab_size == len(saved["chars"]) + len(saved["specials"])
    (run / "tokenizer.json").write_text(json.dumps(swapped.to_dict()))
    expected = r"tokenizer: checkpoint vocabulary of 21 tokens \(fingerprint [0-9a-f]{12}\), this run 21 tokens"
    with pytest.raises(CheckpointError, match=expected):
        load_run(run)


def test_mismatched_tokenizer_is_refused_at_resume(tmp_path: pathlib.Path) -> None:
    """A text run reads its vocabulary back from tokenizer.json on resume; another one there is refused."""
    text = tmp_path / "corpus.txt"
    text.write_text("abcdefgh ijklmnop\n" * 20, encoding="utf-8")
    cfg = tiny_config(tmp_path / "run", steps=2, checkpoint_every=2)
    cfg.data.kind, cfg.data.path, cfg.data.block_size = "text", str(text), 8
    train(cfg, log=lambda s: None)
    saved = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    (tmp_path / "run" / "tokenizer.json").write_text(json.dumps({**saved, "chars": saved["chars"][::-1]}))
    cfg.train.steps = 4
    with pytest.raises(CheckpointError, match="step_00000002 was trained with another configuration: tokenizer"):
        train(cfg, log=lambda s: None)
