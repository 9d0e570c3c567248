from __future__ import annotations

import pathlib

import pytest
import torch

from posenc.data.text import TextDataset
from posenc.data.tokenizers import CharTokenizer

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_split_is_the_last_tenth(path: pathlib.Path) -> None:
    ds = TextDataset(path=path, block_size=16, batch_size=4)
    cut = int(len(TEXT) * 0.9)
    assert ds.tokenizer.decode(ds.train_ids.tolist()) == TEXT[:cut]
    assert ds.tokenizer.decode(ds.val_ids.tolist()) == TEXT[cut:]


def test_train_blocks_are_shifted_and_resumable(path: pathlib.Path) -> None:
    ds = TextDataset(path=path, block_size=16, batch_size=4, seed=1)
    it = ds.train_batches()
    b0, b1 = next(it), next(it)
    assert b0.inputs.shape == (4, 16)
    assert torch.equal(b0.inputs[:, 1:], b0.targets[:, :-1])
    train_text = ds.tokenizer.decode(ds.train_ids.tolist())
    for row in range(4):
        assert ds.tokenizer.decode(b0.inputs[row].tolist() + b0.targets[row, -1:].tolist()) in train_text
    again = next(ds.train_batches(1))
    assert torch.equal(again.inputs, b1.inputs)


def test_validation_scores_every_token_once(path: pathlib.Path) -> None:
    ds = TextDataset(path=path, block_size=32, batch_size=4, eval_batch_size=3)
    batches = list(ds.eval_batches("valid"))
    targets = torch.cat([b.targets.flatten() for b in batches])
    real = targets[targets != ds.tokenizer.pad_id]
    assert torch.equal(real, ds.val_ids)  # the first one too (it was left out: its context is the training text's)
    assert int(batches[0].inputs[0, 0]) == int(ds.train_ids[-1])


def test_given_tokenizer_and_unknowns_warned(path: pathlib.Path) -> None:
    tok = CharTokenizer.from_text(TEXT.replace("z", ""))
    with pytest.warns(UserWarning, match="not in the tokenizer's vocabulary"):
        TextDataset(path=path, block_size=16, tokenizer=tok)


def test_errors(tmp_path: pathlib.Path, path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        TextDataset(path=tmp_path / "nothere.txt")
    with pytest.raises(ValueError, match="is a directory"):  # it said "does not exist"
        TextDataset(path=tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        TextDataset(path=tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"ok\nok\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"latin1.txt:3: not UTF-8"):
        TextDataset(path=tmp_path / "latin1.txt")
    with pytest.raises(ValueError, match="block_size"):
        TextDataset(path=path, block_size=len(TEXT))
    with pytest.raises(ValueError, match="val_fraction"):
        TextDataset(path=path, val_fraction=1.0)


def test_shakespeare_vocabulary(shared_data: pathlib.Path) -> None:
    ds = TextDataset(path=shared_data / "tinyshakespeare" / "input.txt", block_size=64)
    assert ds.tokenizer.vocab_size == 4 + 65  # nanoGPT's 65 characters plus our four specials
    assert len(ds.train_ids) + len(ds.val_ids) == 1115394


def test_bpe_tokenizer_choice(path: pathlib.Path) -> None:
    pytest.importorskip("posenc.data.bpe")
    ds = TextDataset(path=path, block_size=8, tokenizer="bpe", bpe_vocab_size=300)
    assert ds.tokenizer.to_dict()["kind"] == "bpe"
    cut = int(len(TEXT) * 0.9)
    assert ds.tokenizer.decode(ds.train_ids.tolist()) == TEXT[:cut]  # byte level: nothing lost
    assert len(ds.train_ids) < cut  # merges learned: fewer tokens than characters


@pytest.mark.parametrize("kwargs, error, message", [
    ({"block_size": 2.5}, TypeError, "block_size must be an int, got float 2.5"),  # failed later as an index
    ({"batch_size": "8"}, TypeError, "batch_size must be an int, got str '8'"),
    ({"eval_max_blocks": -1}, ValueError, r"eval_max_blocks \(0 = all\) must be an int >= 0, got -1"),  # cut one
    ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),  # NumPy refused it at the first batch
])
def test_bad_sizes_are_named(path: pathlib.Path, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        TextDataset(path=path, **kwargs)


def test_numpy_ints_are_ints(path: pathlib.Path) -> None:
    import numpy as np

    ds = TextDataset(path=path, block_size=np.int64(16), batch_size=np.int64(4), seed=np.int64(3))
    assert (ds.block_size, type(ds.block_size)) == (16, int)
    assert next(iter(ds.eval_batches("valid"))).inputs.shape[-1] == 16
