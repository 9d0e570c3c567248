"""Language modelling on a text file: a tokenizer, a train/validation split, fixed-length blocks.

The text is split by characters (the last ``val_fraction``, 10% by default, is validation, as nanoGPT's
character-level Shakespeare does), then tokenized. A character tokenizer is built from the whole file (so the
validation text has no unknown character); a BPE tokenizer is trained on the training part only.

Training batch ``k`` takes ``batch_size`` blocks of ``block_size + 1`` tokens at offsets drawn from
``numpy.random.default_rng([seed, crc32("train"), k])``: a pure function of ``(seed, k)``, so resuming at batch
``k`` continues the very same stream. Validation reads the validation tokens as consecutive, non-overlapping
blocks, the first of them starting at the training text's last token (the context of the first validation token);
the last, shorter block is padded (its padding targets are ignored), so every validation token is scored once.

Legend: B batch, T block size.
"""

from __future__ import annotations

import numbers
import os
import pathlib
import warnings
import zlib
from collections.abc import Iterator

import numpy as np
import torch

from .._checks import check_positive_int
from .batch import Batch
from .tokenizers import CharTokenizer, Tokenizer

__all__ = ["TextDataset", "read_text"]


def read_text(path: str | os.PathLike[str]) -> str:
    """The whole file as text, with errors that name the file (and the line of a bad byte)."""
    p = pathlib.Path(path)
    if p.is_dir():
        raise ValueError(f"text file {p} is a directory")
    if not p.is_file():
        raise FileNotFoundError(f"text file {p} does not exist")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{p}:{line}: not UTF-8 (byte {raw[err.start]:#04x} at offset {err.start})") from err
    if not text:
        raise ValueError(f"text file {p} is empty")
    return text


def build_text_tokenizer(kind: str, train_text: str, full_text: str, *, vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.from_text(full_text)
    if kind == "bpe":
        from .bpe import BPETokenizer

        return BPETokenizer.train(texts=train_text.splitlines(keepends=True), vocab_size=vocab_size)
    raise ValueError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")


class TextDataset:
    """A text file as a decoder-only language-modelling dataset (see ``posenc.data.dataset``)."""

    model_kind = "lm"

    def __init__(
        self, *, path: str | os.PathLike[str], block_size: int = 256, batch_size: int = 32, val_fraction: float = 0.1,
        seed: int = 0, tokenizer: Tokenizer | str = "char", bpe_vocab_size: int = 2048, eval_max_blocks: int = 0,
        eval_batch_size: int = 64,
    ) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        # a float block size failed later as an index, a str in a comparison; NumPy ints become ints
        block_size, batch_size, eval_batch_size = (check_positive_int(what, v) for what, v in (
            ("block_size", block_size), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)))
        for what, v in (("eval_max_blocks (0 = all)", eval_max_blocks), ("seed", seed)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:  # -1 dropped the last block
                raise ValueError(f"{what} must be an int >= 0, got {v!r}")
        seed, eval_max_blocks = int(seed), int(eval_max_blocks)
        text = read_text(path)
        cut = int(len(text) * (1.0 - val_fraction))
        train_text, val_text = text[:cut], text[cut:]
        if isinstance(tokenizer, str):
            tokenizer = build_text_tokenizer(tokenizer, train_text, text, vocab_size=bpe_vocab_size)
        self.tokenizer = tokenizer
        unknown_before = getattr(tokenizer, "unknown_count", 0)
        self.train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
        self.val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
        unknown = getattr(tokenizer, "unknown_count", 0) - unknown_before
        if unknown:
            warnings.warn(f"{path}: {unknown} characters are not in the tokenizer's vocabulary and were mapped to <unk>",
                          stacklevel=2)
        if len(self.train_ids) < block_size + 1:
            raise ValueError(f"{path}: the training part has {len(self.train_ids)} tokens, fewer than "
                             f"block_size + 1 = {block_size + 1}")
        if len(self.val_ids) < 2:
            raise ValueError(f"{path}: the validation part has {len(self.val_ids)} tokens; need at least 2")
        self.path, self.block_size, self.batch_size, self.seed = str(path), block_size, batch_size, seed
        self.eval_max_blocks, self.eval_batch_size = eval_max_blocks, eval_batch_size

    def describe(self) -> str:
        return (f"text {self.path}: {len(self.train_ids):,} training and {len(self.val_ids):,} validation tokens, "
                f"vocabulary {self.tokenizer.vocab_size}, blocks of {self.block_size}")

    def train_batches(self, start: int = 0) -> Iterator[Batch]:
        T, data = self.block_size, self.train_ids
        span = torch.arange(T + 1)  # (T+1,)
        k = start
        while True:
            rng = np.random.default_rng([self.seed, zlib.crc32(b"train"), k])
            offsets = torch.from_numpy(rng.integers(0, len(data) - T, size=self.batch_size))  # (B,)
            blocks = data[offsets[:, None] + span]  # (B, T+1)
            yield Batch(inputs=blocks[:, :-1].contiguous(), targets=blocks[:, 1:].contiguous())
            k += 1

    def eval_names(self) -> list[str]:
        return ["valid"]

    def eval_batches(self, name: str) -> Iterator[Batch]:
        if name != "valid":
            raise ValueError(f"no evaluation set {name!r}; have valid")
        # The first block starts at the training text's last token, so the first validation token is a target too.
        T, pad = self.block_size, self.tokenizer.pad_id
        data = torch.cat([self.train_ids[-1:], self.val_ids])
        starts = list(range(0, len(data) - 1, T))
        if self.eval_max_blocks:
            starts = starts[: self.eval_max_blocks]
        for i in range(0, len(starts), self.eval_batch_size):
            chunk = starts[i : i + self.eval_batch_size]
            inputs = torch.full((len(chunk), T), pad, dtype=torch.long)  # (B, T)
            targets = torch.full((len(chunk), T), pad, dtype=torch.long)
            for b, s in enumerate(chunk):
                n = min(T, len(data) - 1 - s)
                inputs[b, :n] = data[s : s + n]
                targets[b, :n] = data[s + 1 : s + 1 + n]
            yield Batch(inputs=inputs, targets=targets)
