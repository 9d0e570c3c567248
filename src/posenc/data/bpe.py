"""Byte-level BPE (Sennrich et al. 2016; byte-level as in GPT-2, Radford et al. 2019) on Hugging Face ``tokenizers``.

Why byte level: the base alphabet is the 256 bytes, so every string — emoji, control characters, any script —
has an encoding, and ``decode(encode(s)) == s`` holds exactly (no unknown token, no normalization, no stripped
space). Merges are learned from the training texts; for translation one joint vocabulary is trained on source and
target together so that the embeddings can be shared (Press & Wolf 2017).

The special tokens ``<pad>``, ``<bos>``, ``<eos>`` take ids 0, 1, 2 and live outside the Hugging Face model: its ids
are shifted by 3. A text that happens to contain the string ``"<pad>"`` is therefore encoded as ordinary bytes
and comes back intact, which would not hold if the specials were "added tokens" matched inside the text.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .tokenizers import register_tokenizer, token_id

__all__ = ["BPETokenizer", "SPECIALS", "VOCAB_FLOOR"]

SPECIALS = ("<pad>", "<bos>", "<eos>")
_OFFSET = len(SPECIALS)
VOCAB_FLOOR = 256 + _OFFSET  # the smallest vocabulary: every byte, then the specials


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{where} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates have no UTF-8 form, hence no bytes to tokenize
        raise ValueError(f"{where} holds {text[err.start:err.end]!r} at index {err.start}, which is not valid Unicode") from err
    return text


class BPETokenizer:
    """A byte-level BPE tokenizer: ids 0/1/2 are pad/bos/eos, the rest are the learned byte-level vocabulary."""

    kind = "bpe"
    pad_id = 0
    bos_id = 1
    eos_id = 2

    def __init__(self, *, hf: HFTokenizer) -> None:
        self._hf = hf
        self.vocab_size = hf.get_vocab_size() + _OFFSET

    @classmethod
    def train(cls, *, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges from ``texts`` until the vocabulary (specials included) has ``vocab_size`` entries.

        The vocabulary can come out smaller when the texts have fewer pairs above ``min_frequency``.
        """
        floor = VOCAB_FLOOR
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < floor:
            raise ValueError(f"vocab_size must be an int >= {floor} (256 bytes + {_OFFSET} specials), got {vocab_size!r}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - _OFFSET, min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        hf.train_from_iterator((_check_text(t, "a training text") for t in texts), trainer)
        return cls(hf=hf)

    def encode(self, text: str) -> list[int]:
        _check_text(text, "text")
        return [i + _OFFSET for i in self._hf.encode(text, add_special_tokens=False).ids]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, run in parallel by the Rust library."""
        for i, t in enumerate(texts):
            _check_text(t, f"texts[{i}]")
        return [[i + _OFFSET for i in e.ids] for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; the special ids (pad, bos, eos) are skipped."""
        body = []
        for i in ids:
            i = token_id(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i >= _OFFSET:
                body.append(i - _OFFSET)
        return self._hf.decode(body, skip_special_tokens=False)

    def token(self, i: int) -> str:
        """The vocabulary entry of id ``i`` (byte-level symbols, for inspection)."""
        return SPECIALS[i] if i < _OFFSET else self._hf.id_to_token(i - _OFFSET)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "specials": list(SPECIALS), "hf_tokenizer": json.loads(self._hf.to_str())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        if data.get("kind") != cls.kind:
            raise ValueError(f"expected a tokenizer of kind {cls.kind!r}, got {data.get('kind')!r}")
        if list(data.get("specials", [])) != list(SPECIALS):
            raise ValueError(f"a bpe tokenizer's specials must be {list(SPECIALS)}, got {data.get('specials')!r}")
        return cls(hf=HFTokenizer.from_str(json.dumps(data["hf_tokenizer"])))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no spaces) of ``to_dict()``."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> None:
        """One JSON file: the kind, the specials and the Hugging Face tokenizer JSON embedded."""
        pathlib.Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


register_tokenizer(BPETokenizer.kind, BPETokenizer)
