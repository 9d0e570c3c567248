"""The tokenizer protocol, the registry of tokenizer kinds, and the character-level tokenizer.

Every tokenizer maps text to ids and back and has ``vocab_size``, ``pad_id``, ``bos_id`` and ``eos_id``. It
serializes to a JSON-able dict with a ``"kind"`` field (``to_dict``), which ``save`` writes and
``load_tokenizer`` reads back by dispatching on the kind through a small registry, so that a run directory can
hold any tokenizer as plain JSON (never a pickle). ``fingerprint()`` is the sha256 of the canonical JSON
(sorted keys, no spaces): a checkpoint records it, and a run is never resumed or evaluated under another
vocabulary.

Kinds: ``"char"`` (:class:`CharTokenizer`, here; the built-in tasks use it with an extra ``<sep>`` special)
and ``"bpe"`` (byte-level BPE, ``posenc.data.bpe``, which registers itself on import).

Unknown characters: a :class:`CharTokenizer` knows only the characters it was built from. Any other character
is mapped to ``<unk>`` and *counted* (``unknown_count``, and ``unknown_chars`` says which); the datasets report a
non-zero count as a warning, so nothing is lost silently. Byte-level BPE has no unknowns at all.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import pathlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CharTokenizer",
    "Tokenizer",
    "canonical_json",
    "load_tokenizer",
    "register_tokenizer",
    "token_id",
    "tokenizer_from_dict",
    "tokenizer_kinds",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What the trainer, the datasets and the generation code need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def fingerprint(self) -> str: ...

    def save(self, path: str | os.PathLike[str]) -> None: ...


_REGISTRY: dict[str, type] = {}


def token_id(i: Any) -> int:
    """An id to decode as an int: ints, NumPy ints and integer 0-d tensors; a float or a string is a TypeError
    (``int()`` turned 3.7 into 3 and "5" into 5 without a word)."""
    try:
        return operator.index(i)
    except TypeError:
        raise TypeError(f"token ids must be ints, got {type(i).__name__} {i!r}") from None


def register_tokenizer(kind: str, cls: type) -> type:
    """Make ``load_tokenizer`` build ``cls.from_dict(d)`` for a saved dict whose ``"kind"`` is ``kind``."""
    if kind in _REGISTRY and _REGISTRY[kind] is not cls:
        raise ValueError(f"tokenizer kind {kind!r} is already registered to {_REGISTRY[kind].__name__}")
    _REGISTRY[kind] = cls
    return cls


def _ensure_builtin_kinds() -> None:
    """Import the modules that register the other kinds (BPE needs the optional ``tokenizers`` package)."""
    if "bpe" not in _REGISTRY:
        try:
            from . import bpe  # noqa: F401  (registers "bpe")
        except ImportError:
            pass


def tokenizer_kinds() -> list[str]:
    """The registered tokenizer kinds, sorted."""
    _ensure_builtin_kinds()
    return sorted(_REGISTRY)


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``to_dict()`` output, by its ``"kind"``."""
    if not isinstance(data, dict):
        raise TypeError(f"a saved tokenizer must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in _REGISTRY:
        _ensure_builtin_kinds()
    if kind not in _REGISTRY:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known kinds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind].from_dict(data)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer saved as JSON by its ``save`` method."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"tokenizer file {path} is not valid UTF-8 JSON: {err}") from err
    return tokenizer_from_dict(data)


def canonical_json(data: Any) -> str:
    """The one JSON text of ``data`` that fingerprints are computed from (sorted keys, no spaces)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class CharTokenizer:
    """One id per character. Ids 0..3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``; ``extra_specials`` (e.g.
    ``("<sep>",)``) follow, then the characters in the order given.

    Build it from a corpus with :meth:`from_text` (the sorted set of its characters, as nanoGPT's
    character-level Shakespeare does) or from a fixed alphabet (the built-in tasks).
    """

    kind = "char"
    SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    def __init__(self, *, chars: str | Sequence[str], extra_specials: Sequence[str] = ()) -> None:
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"every entry of chars must be a single character, got {c!r}")
        dup = [c for c, n in Counter(chars).items() if n > 1]
        if dup:
            raise ValueError(f"chars holds duplicates: {dup[:10]!r}")
        specials = list(self.SPECIALS) + list(extra_specials)
        if len(set(specials)) != len(specials):
            raise ValueError(f"extra_specials {list(extra_specials)!r} repeat a special of {list(self.SPECIALS)!r}")
        self.chars = "".join(chars)
        self.specials = tuple(specials)
        self._itos = specials + chars
        self._stoi = {c: i + len(specials) for i, c in enumerate(chars)}
        self.vocab_size = len(self._itos)
        self.unknown_count = 0
        self.unknown_chars: Counter[str] = Counter()

    @classmethod
    def from_text(cls, text: str, *, extra_specials: Sequence[str] = ()) -> CharTokenizer:
        """The sorted set of characters of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot build a character vocabulary from an empty text")
        return cls(chars=sorted(set(text)), extra_specials=extra_specials)

    def special_id(self, name: str) -> int:
        """The id of a special token such as ``"<sep>"``."""
        if name not in self.specials:
            raise ValueError(f"no special token {name!r}; this tokenizer has {', '.join(self.specials)}")
        return self.specials.index(name)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``; an unknown character becomes ``<unk>`` and is counted."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        stoi, unk = self._stoi, self.unk_id
        ids = [stoi.get(c, unk) for c in text]
        if unk in ids:
            missing = [c for c in text if c not in stoi]
            self.unknown_count += len(missing)
            self.unknown_chars.update(missing)
        return ids

    def decode(self, ids: Iterable[int], *, skip_specials: bool = True) -> str:
        """Text of ``ids``; special tokens are skipped unless ``skip_specials=False`` (then written by name)."""
        out = []
        n_special = len(self.specials)
        for i in ids:
            i = token_id(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i >= n_special or not skip_specials:
                out.append(self._itos[i])
        return "".join(out)

    def token(self, i: int) -> str:
        return self._itos[i]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "specials": list(self.specials), "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        if data.get("kind") != cls.kind:
            raise ValueError(f"expected a tokenizer of kind {cls.kind!r}, got {data.get('kind')!r}")
        specials = list(data.get("specials", []))
        if specials[: len(cls.SPECIALS)] != list(cls.SPECIALS):
            raise ValueError(f"a char tokenizer's specials must start with {list(cls.SPECIALS)}, got {specials!r}")
        return cls(chars=data["chars"], extra_specials=specials[len(cls.SPECIALS):])

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of ``to_dict()``."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> None:
        pathlib.Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, specials={list(self.specials)})"


register_tokenizer(CharTokenizer.kind, CharTokenizer)
