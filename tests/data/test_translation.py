from __future__ import annotations

import gzip
import itertools

import pytest
import torch

from posenc.data.bpe import BPETokenizer
from posenc.data.translation import TranslationConfig, TranslationDataset, collate_pairs

DE = ["Ein Hund läuft.", "Zwei Kinder spielen im Park.", "Eine Frau trinkt Kaffee.", "Ein Mann schläft.",
      "Die Katze sitzt auf dem Dach.", "Ein Junge wirft einen Ball."]
EN = ["A dog runs.", "Two children play in the park.", "A woman drinks coffee.", "A man sleeps.",
      "The cat sits on the roof.", "A boy throws a ball."]


def write(path, lines) -> str:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    long_de = " ".join(["sehr"] * 40) + " lang."
    src = DE * 5 + [long_de, ""]
    tgt = EN * 5 + ["very long.", "empty source"]
    return {
        "train": [write(tmp_path / "train.de.gz", src), write(tmp_path / "train.en", tgt)],
        "eval": {"test": [write(tmp_path / "test.de", DE + [long_de]), write(tmp_path / "test.en", EN + ["x"])]},
    }


def test_collate_layout() -> None:
    b = collate_pairs([[5, 6, 7], [8]], [[9], [10, 11]], pad_id=0, bos_id=1, eos_id=2)
    assert b.src.tolist() == [[5, 6, 7, 2], [8, 2, 0, 0]]
    assert b.inputs.tolist() == [[1, 9, 0], [1, 10, 11]]
    assert b.targets.tolist() == [[9, 2, 0], [10, 11, 2]]


def test_filtering_is_reported_and_eval_is_complete(corpus) -> None:
    cfg = TranslationConfig(train=corpus["train"], eval=corpus["eval"], vocab_size=400, max_len=20, max_tokens=64)
    with pytest.warns(UserWarning, match=r"kept 30 of 32 pairs; skipped 1 longer than 20 tokens \(lines 31\); "
                                         r"skipped 1 with an empty side \(lines 32\)"):
        ds = TranslationDataset.build(cfg)
    assert (ds.report.too_long, ds.report.empty, ds.report.kept) == ([31], [32], 30)
    assert len(ds.src_ids) == 30
    test = ds.eval_sets["test"]
    assert len(test) == 7 and test.references[-1] == "x"  # never filtered
    assert len(test.src_ids[-1]) > 20
    seen = sorted(itertools.chain.from_iterable(test.index_batches(64)))
    assert seen == list(range(7))
    with pytest.raises(ValueError, match="no evaluation set 'valid'; have test"):
        next(ds.eval_batches("valid"))


def test_train_batches_cover_each_pair_once_per_epoch(corpus) -> None:
    cfg = TranslationConfig(train=corpus["train"], vocab_size=400, max_len=20, max_tokens=64, seed=1)
    with pytest.warns(UserWarning):
        ds = TranslationDataset.build(cfg)
    tok, n = ds.tokenizer, ds.batches_per_epoch()
    batches = list(itertools.islice(ds.train_batches(), 2 * n))
    for epoch in (batches[:n], batches[n:]):
        pairs = []
        for b in epoch:
            assert b.src.numel() <= 64 and b.inputs.numel() <= 64
            assert torch.equal(b.inputs[:, 0], torch.full((b.size,), tok.bos_id))
            assert torch.equal(b.inputs[:, 1:] == tok.pad_id, b.targets[:, 1:] == tok.pad_id)  # same padding
            for s, t in zip(b.src.tolist(), b.targets.tolist()):
                k, m = s.index(tok.eos_id), t.index(tok.eos_id)
                assert set(s[k + 1 :]) <= {tok.pad_id} and set(t[m + 1 :]) <= {tok.pad_id}
                pairs.append((tok.decode(s), tok.decode(t)))
        assert sorted(pairs) == sorted(zip(DE * 5, EN * 5))
    resumed = list(itertools.islice(ds.train_batches(start=n + 1), n - 1))
    assert all(torch.equal(a.src, b.src) and torch.equal(a.targets, b.targets) for a, b in zip(resumed, batches[n + 1 :]))


def test_given_tokenizer_is_used(corpus) -> None:
    tok = BPETokenizer.train(texts=DE + EN, vocab_size=300)
    with pytest.warns(UserWarning):
        ds = TranslationDataset.build(TranslationConfig(train=corpus["train"], max_len=1000, max_tokens=4096),
                                      tokenizer=tok)
    assert ds.tokenizer is tok and ds.vocab_size == tok.vocab_size
    assert ds.report.too_long == [] and ds.report.empty == [32]


def test_multi30k_loads_and_round_trips(shared_data) -> None:
    root = shared_data / "multi30k"
    cfg = TranslationConfig(
        train=[str(root / "val.de.gz"), str(root / "val.en.gz")],
        eval={"test_2016_flickr": [str(root / "test_2016_flickr.de.gz"), str(root / "test_2016_flickr.en.gz")]},
        vocab_size=2000, max_len=256,
    )
    ds = TranslationDataset.build(cfg)
    test = ds.eval_sets["test_2016_flickr"]
    assert len(test) == 1000 and ds.report.kept == ds.report.total == 1014
    tok = ds.tokenizer
    assert all(tok.decode(ids) == text for ids, text in zip(test.src_ids, test.sources))
    assert all(tok.decode(ids) == text for ids, text in zip(test.tgt_ids, test.references))


def test_trainer_interface(corpus) -> None:
    from posenc.models import Seq2Seq, Seq2SeqConfig

    cfg = TranslationConfig(train=corpus["train"], eval=corpus["eval"], vocab_size=300, max_len=20, max_tokens=64)
    with pytest.warns(UserWarning):
        ds = TranslationDataset.build(cfg)
    assert ds.model_kind == "seq2seq" and ds.eval_names() == ["test"]
    assert "kept 30 of 32 pairs" in ds.describe() and "test (7 lines)" in ds.describe()
    batches = list(ds.eval_batches("test"))
    assert sum(b.size for b in batches) == 7 and all(b.src.numel() <= 64 for b in batches[:-1])
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=ds.vocab_size, tgt_vocab_size=ds.vocab_size, d_model=16,
                                  num_heads=2, dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1))
    scores = ds.extra_metrics(model, "test", autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    assert set(scores) == {"bleu", "chrf"} and all(0.0 <= v <= 100.0 for v in scores.values())
