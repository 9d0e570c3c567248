"""The tokenizer protocol and registry (minimal version; the full module with the character tokenizer replaces it).

Every tokenizer maps text to ids and back, has ``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``, serializes to a
JSON dict with a ``"kind"`` field, and has a fingerprint (sha256 of its canonical JSON) that a checkpoint records so
that a run is never resumed or evaluated with another vocabulary.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Protocol, runtime_checkable

__all__ = ["Tokenizer", "load_tokenizer", "register_tokenizer", "tokenizer_from_dict"]


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def fingerprint(self) -> str: ...

    def save(self, path: str | os.PathLike[str]) -> None: ...


_REGISTRY: dict[str, type] = {}


def register_tokenizer(kind: str, cls: type) -> type:
    """Make ``load_tokenizer`` build ``cls.from_dict(d)`` for a saved dict whose ``"kind"`` is ``kind``."""
    _REGISTRY[kind] = cls
    return cls


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    kind = data.get("kind")
    if kind not in _REGISTRY:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known kinds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind].from_dict(data)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer saved as JSON by its ``save`` method."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    return tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8")))
