from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
import torch

from posenc.data.tokenizers import (
    CharTokenizer, Tokenizer, load_tokenizer, register_tokenizer, tokenizer_from_dict,
)


def test_specials_and_roundtrip() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 4 + len(set("hello world"))
    ids = tok.encode("hello")
    assert all(i >= 4 for i in ids)
    assert tok.decode(ids) == "hello"
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == "hello"
    assert tok.decode([tok.bos_id, *ids], skip_specials=False) == "<bos>hello"
    assert isinstance(tok, Tokenizer)


def test_sorted_vocabulary_like_nanogpt() -> None:
    tok = CharTokenizer.from_text("cabca")
    assert tok.encode("abc") == [4, 5, 6]


def test_unknown_characters_are_counted() -> None:
    tok = CharTokenizer.from_text("abc")
    assert tok.encode("axbyy") == [4, 3, 5, 3, 3]
    assert tok.unknown_count == 3
    assert tok.unknown_chars == {"x": 1, "y": 2}


def test_extra_specials_follow_the_four() -> None:
    tok = CharTokenizer(chars="01", extra_specials=("<sep>",))
    assert tok.special_id("<sep>") == 4
    assert tok.encode("10") == [6, 5]
    with pytest.raises(ValueError, match="<mask>"):
        tok.special_id("<mask>")


def test_fingerprint_is_sha256_of_canonical_json(tmp_path: pathlib.Path) -> None:
    tok = CharTokenizer(chars="ba", extra_specials=("<sep>",))
    canon = json.dumps({"kind": "char", "specials": ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>"], "chars": "ba"},
                       sort_keys=True, separators=(",", ":"))
    assert tok.fingerprint() == hashlib.sha256(canon.encode()).hexdigest()
    assert CharTokenizer(chars="ab").fingerprint() != CharTokenizer(chars="ba").fingerprint()
    tok.save(tmp_path / "tok.json")
    back = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(back, CharTokenizer)
    assert back.fingerprint() == tok.fingerprint()
    assert back.encode("ab") == tok.encode("ab")


def test_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="duplicates"):
        CharTokenizer(chars="aba")
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="unknown tokenizer kind 'nope'"):
        tokenizer_from_dict({"kind": "nope"})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        CharTokenizer(chars="a").decode([5])
    with pytest.raises(ValueError, match="already registered"):
        register_tokenizer("char", dict)


def test_decode_takes_int_ids_only():
    """int() read 3.7 as 3 and "5" as 5; NumPy ints and integer 0-d tensors are ids too."""
    import numpy as np

    tok = CharTokenizer.from_text("abc")
    want = tok.decode([tok.encode("abc")[1]])
    assert tok.decode([np.int64(tok.encode("abc")[1])]) == want
    assert tok.decode(torch.tensor([tok.encode("abc")[1]])) == want
    for bad in (3.7, "5"):
        with pytest.raises(TypeError, match=f"token ids must be ints, got {type(bad).__name__}"):
            tok.decode([bad])
