"""Awkward text: emoji (with joiners and modifiers), control characters, mixed scripts, combining marks, empty
lines, CRLF. Tokenizers round-trip it losslessly; unknown characters are counted, never dropped silently; the text
dataset keeps every character and scores every validation token."""

from __future__ import annotations

import pathlib

import pytest
import torch

from posenc.data.text import TextDataset
from posenc.data.tokenizers import CharTokenizer

AWKWARD = (
    "plain ASCII line\n\n\n"
    "emoji: 😀 👍🏽 👩‍👩‍👧 🇫🇷 and a variation selector ❤️\n"
    "controls: \x00 \x01 \x07 \x1b[31m \x7f \t tab \r\n"
    "scripts: Ελληνικά Русский العربية עברית हिन्दी 中文 日本語 한국어\n"
    "combining: e\u0301 vs \u00e9, n\u0303; zero width: a\u200bb; BOM \ufeff; line sep \u2028 para \u2029\n"
    "\n"
    "literal specials are text: <pad> <unk> <eos>\n"
)


def test_char_tokenizer_round_trip_is_lossless() -> None:
    tok = CharTokenizer.from_text(AWKWARD)
    ids = tok.encode(AWKWARD)
    assert len(ids) == len(AWKWARD)  # one id per code point: nothing merged or dropped
    assert tok.decode(ids) == AWKWARD
    assert tok.unknown_count == 0


def test_unknown_characters_are_counted_not_dropped() -> None:
    tok = CharTokenizer.from_text("abc \n")
    text = "a😀b\x00c ab"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert ids.count(tok.unk_id) == 2
    assert tok.unknown_count == 2 and dict(tok.unknown_chars) == {"😀": 1, "\x00": 1}


def test_byte_level_bpe_round_trip_is_lossless() -> None:
    bpe = pytest.importorskip("posenc.data.bpe", reason="byte-level BPE is not in this checkout")
    tok = bpe.BPETokenizer.train(texts=AWKWARD.splitlines(keepends=True) * 3, vocab_size=300)
    for text in (AWKWARD, "unseen: 🦀 Ѯ \x02 ﷺ\n", ""):
        assert tok.decode(tok.encode(text)) == text


@pytest.fixture
def corpus(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "awkward.txt"
    path.write_bytes((AWKWARD * 4).encode("utf-8"))  # write_bytes: keep \r\n as it is
    return path


def test_text_dataset_keeps_every_character(corpus: pathlib.Path) -> None:
    ds = TextDataset(path=corpus, block_size=16, batch_size=4, eval_batch_size=3)
    text = AWKWARD * 4
    assert ds.tokenizer.decode(torch.cat([ds.train_ids, ds.val_ids]).tolist()) == text
    scored = sum(int((b.targets != ds.tokenizer.pad_id).sum()) for b in ds.eval_batches("valid"))
    assert scored == len(ds.val_ids)  # every validation token is a target exactly once, the first one too


def test_text_dataset_warns_about_unknown_characters(corpus: pathlib.Path) -> None:
    tok = CharTokenizer.from_text(AWKWARD.replace("😀", "").replace("中", ""))
    with pytest.warns(UserWarning, match=r"8 characters are not in the tokenizer's vocabulary"):
        TextDataset(path=corpus, block_size=16, batch_size=4, tokenizer=tok)


def test_invalid_utf8_is_an_error_naming_file_and_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n" * 3)
    with pytest.raises(ValueError, match=r"bad\.txt:3: not UTF-8 \(byte 0xff"):
        TextDataset(path=path, block_size=4)
