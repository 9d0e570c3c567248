from __future__ import annotations

import pathlib

import pytest

pytest.importorskip("posenc.data.translation")

from posenc.train import RunConfig, train  # noqa: E402


def test_translation_run_from_a_tsv(tmp_path: pathlib.Path) -> None:
    words = ["ein hund", "eine katze", "zwei hunde", "ein haus", "das auto", "die katze", "der hund", "ein baum"]
    english = ["a dog", "a cat", "two dogs", "a house", "the car", "the cat", "the dog", "a tree"]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{a}\t{b}\n" for a, b in zip(words * 4, english * 4)), encoding="utf-8")
    cfg = RunConfig()
    cfg.model.kind, cfg.model.d_model, cfg.model.dim_feedforward = "seq2seq", 32, 64
    cfg.model.num_encoder_layers = cfg.model.num_decoder_layers = 1
    cfg.model.encoding = "sinusoidal"
    cfg.data.kind, cfg.data.train_files, cfg.data.valid_files = "translation", [str(tsv)], [str(tsv)]
    cfg.data.bpe_vocab_size, cfg.data.max_tokens = 300, 64
    cfg.train.steps, cfg.train.threads, cfg.train.precision, cfg.train.run_dir = 20, 1, "fp32", str(tmp_path / "run")
    cfg.optim.lr = 1e-2
    res = train(cfg, log=lambda s: None)
    valid = res.evals["valid"]
    assert set(valid.extra) == {"bleu", "chrf"} and 0.0 <= valid.extra["bleu"] <= 100.0
    assert valid.loss < 5.0  # below chance over a 300-entry vocabulary (ln 300 = 5.7)
