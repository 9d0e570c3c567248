from __future__ import annotations

import json

import pytest

from posenc.data.bpe import SPECIALS, BPETokenizer
from posenc.data.tokenizers import load_tokenizer

CORPUS = [
    "Ein Mann fährt Fahrrad.", "A man rides a bicycle.", "Zwei Hunde spielen im Schnee.",
    "Two dogs play in the snow.", "Eine Frau liest ein Buch.", "A woman reads a book.",
] * 20

HARD = [
    "",
    " ",
    "  leading and trailing spaces  ",
    "\x00\x01\x07\x1b[31m\x7f control\tcharacters\r\n and CRLF",
    "emoji 😀👍🏽👩‍👩‍👧‍👦 and flags 🇩🇪🇬🇧",
    "mixed scripts: Straße, 東京, Москва, مرحبا, नमस्ते, ελληνικά",
    "combining: e\u0301 vs \u00e9, zero width \u200b\u200d joiner, BOM \ufeff, U+2028 \u2028 line sep",
    "the literal specials <pad> <bos> <eos> stay text",
    "\U0010ffff private use \ue000 and astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(texts=CORPUS, vocab_size=1000)


@pytest.mark.parametrize("text", HARD)
def test_round_trip_is_exact(tok: BPETokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(tok.pad_id != i and tok.bos_id != i and tok.eos_id != i for i in ids)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_specials_and_vocab_size(tok: BPETokenizer) -> None:
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert [tok.token(i) for i in range(3)] == list(SPECIALS)
    # Six sentences repeated: every pair of symbols is eventually merged, far below the 1000 asked for.
    assert 259 < tok.vocab_size < 1000
    assert BPETokenizer.train(texts=CORPUS, vocab_size=300).vocab_size == 300
    assert tok.decode([tok.bos_id, *tok.encode("Hund"), tok.eos_id, tok.pad_id]) == "Hund"
    assert tok.encode_batch(["a b", ""]) == [tok.encode("a b"), []]


def test_merges_compress_the_training_text(tok: BPETokenizer) -> None:
    # Byte-level pre-tokenization splits words (with their leading space) from punctuation; with merges to spare,
    # each frequent word becomes one token ("Ġ" is the byte-level symbol of a space).
    ids = tok.encode("A woman reads a book.")
    assert [tok.token(i) for i in ids] == ["A", "Ġwoman", "Ġreads", "Ġa", "Ġbook", "."]


def test_save_load_and_fingerprint(tok: BPETokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == "bpe"
    back = load_tokenizer(path)
    assert isinstance(back, BPETokenizer)
    assert back.fingerprint() == tok.fingerprint()
    assert back.vocab_size == tok.vocab_size
    for text in HARD:
        assert back.encode(text) == tok.encode(text)
    other = BPETokenizer.train(texts=CORPUS, vocab_size=280)
    assert other.fingerprint() != tok.fingerprint()


def test_training_is_deterministic() -> None:
    a = BPETokenizer.train(texts=CORPUS, vocab_size=300)
    b = BPETokenizer.train(texts=CORPUS, vocab_size=300)
    assert a.fingerprint() == b.fingerprint()


def test_errors(tok: BPETokenizer) -> None:
    with pytest.raises(ValueError, match="vocab_size must be an int >= 259"):
        BPETokenizer.train(texts=CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="not valid Unicode"):
        tok.encode("lone surrogate \ud800")
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"id {tok.vocab_size} is outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="expected a tokenizer of kind 'bpe'"):
        BPETokenizer.from_dict({"kind": "char"})


def test_decode_refuses_float_ids():
    tok = BPETokenizer.train(texts=["hello world"] * 4, vocab_size=300)
    with pytest.raises(TypeError, match="token ids must be ints, got float 3.7"):
        tok.decode([3.7, 40.9])
