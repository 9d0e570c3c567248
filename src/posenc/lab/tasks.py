"""The data of a length-generalization run: copy-style sequence tasks and a character LM on a text file.

Sequence tasks follow Kazemnejad et al. (2023, sec. 3 and App. D): an input of n random symbols, a separator,
and the output; lengths ``n ~ U(lo, hi)`` in training; the loss covers the output only. ``copy`` outputs the
input, ``reverse`` outputs it reversed, ``repeat`` takes one symbol repeated n times (their ``rsc`` split).
Two layouts of the same example:

* decoder-only: ``x_1 .. x_n SEP y_1 .. y_n EOS`` with targets shifted by one, input positions ignored;
* encoder-decoder: source ``x_1 .. x_n``, decoder input ``BOS y_1 .. y_n``, targets ``y_1 .. y_n EOS``.

Exact match is read from one teacher-forced pass: greedy decoding reproduces the whole target exactly when,
and only when, the argmax at every target position is right (each greedy step then sees the true prefix).

Every batch is a pure function of (seed, step), so a resumed run sees the data an uninterrupted one would.
Legend: B batch, T length.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.batch import Batch

__all__ = ["SEQUENCE_TASKS", "CharText", "SequenceTask"]

SEQUENCE_TASKS = ("copy", "reverse", "repeat")
IGNORE = -100  # target value the loss skips


def _stream(seed: int, step: int, kind: int) -> int:
    """A generator seed for batch ``step`` of run ``seed`` (no ``hash()``: it changes between processes)."""
    return (seed * 1_000_003 + step) * 8 + kind


@dataclass(frozen=True)
class SequenceTask:
    """A copy-style task over ``symbols`` symbols; ids ``symbols..symbols+3`` are PAD, SEP, EOS, BOS."""

    name: str = "copy"
    symbols: int = 16

    def __post_init__(self) -> None:
        if self.name not in SEQUENCE_TASKS:
            raise ValueError(
                f"task must be one of {', '.join(SEQUENCE_TASKS)} (or 'lm' with a text file); got {self.name!r}"
            )
        if self.symbols < 2:
            raise ValueError(f"a task needs at least 2 symbols, got {self.symbols}")

    @property
    def pad(self) -> int:
        return self.symbols

    @property
    def sep(self) -> int:
        return self.symbols + 1

    @property
    def eos(self) -> int:
        return self.symbols + 2

    @property
    def bos(self) -> int:
        return self.symbols + 3

    @property
    def vocab_size(self) -> int:
        return self.symbols + 4

    def _pairs(self, lengths: list[int], gen: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        out = []
        for n in lengths:
            if self.name == "repeat":
                x = torch.randint(self.symbols, (1,), generator=gen).repeat(n)
            else:
                x = torch.randint(self.symbols, (n,), generator=gen)
            out.append((x, x.flip(0) if self.name == "reverse" else x))
        return out

    def sample(self, lengths: list[int], gen: torch.Generator, *, seq2seq: bool) -> Batch:
        """One batch with one example per entry of ``lengths``, padded on the right."""
        pairs = self._pairs(lengths, gen)
        size = len(pairs)
        if seq2seq:
            s_len = max(len(x) for x, _ in pairs)
            t_len = max(len(y) for _, y in pairs) + 1
            src = torch.full((size, s_len), self.pad)
            inputs = torch.full((size, t_len), self.pad)
            targets = torch.full((size, t_len), IGNORE)
            for b, (x, y) in enumerate(pairs):
                src[b, : len(x)] = x
                inputs[b, : len(y) + 1] = torch.cat([torch.tensor([self.bos]), y])
                targets[b, : len(y) + 1] = torch.cat([y, torch.tensor([self.eos])])
            return Batch(inputs=inputs, targets=targets, src=src, lengths=torch.tensor(lengths))
        t_len = max(len(x) + len(y) + 2 for x, y in pairs) - 1
        inputs = torch.full((size, t_len), self.pad)
        targets = torch.full((size, t_len), IGNORE)
        for b, (x, y) in enumerate(pairs):
            seq = torch.cat([x, torch.tensor([self.sep]), y, torch.tensor([self.eos])])  # (2n + 2,)
            inputs[b, : len(seq) - 1] = seq[:-1]
            targets[b, len(x) : len(seq) - 1] = seq[len(x) + 1 :]  # predict y and EOS after SEP
        return Batch(inputs=inputs, targets=targets, lengths=torch.tensor(lengths))

    def train_batch(self, lo: int, hi: int, batch_size: int, seed: int, step: int, *, seq2seq: bool) -> Batch:
        gen = torch.Generator().manual_seed(_stream(seed, step, 1))
        lengths = torch.randint(lo, hi + 1, (batch_size,), generator=gen).tolist()
        return self.sample(lengths, gen, seq2seq=seq2seq)

    def eval_batch(self, length: int, examples: int, *, seq2seq: bool) -> Batch:
        """The fixed test set at one length (the same for every encoding and seed)."""
        gen = torch.Generator().manual_seed(1_000_003 * length + 7)
        return self.sample([length] * examples, gen, seq2seq=seq2seq)


class CharText:
    """Character-level LM data from a UTF-8 text file: the first 90% for training, the last 10% for
    evaluation in non-overlapping windows (Press et al. 2022, sec. 2.1: every window is predicted from scratch)."""

    def __init__(self, path: str | pathlib.Path, *, valid_fraction: float = 0.1) -> None:
        p = pathlib.Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"text file {str(p)!r} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{p} is not UTF-8 text: {err}") from None
        if len(text) < 1000:
            raise ValueError(f"{p} holds {len(text)} characters; a character LM needs at least 1000")
        self.chars = sorted(set(text))
        index = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([index[c] for c in text], dtype=torch.long)
        cut = int(len(ids) * (1 - valid_fraction))
        self.train, self.valid = ids[:cut], ids[cut:]
        self.path = p

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def check_context(self, length: int) -> None:
        """A training window of ``length`` inputs and its next character must fit the training text with room to
        start at more than one place."""
        if length + 2 > len(self.train):
            raise ValueError(f"training context {length} is too long for {self.path}: its training text (the first "
                             f"90%) has {len(self.train)} characters, and a context of n needs n + 2; give a "
                             f"context of at most {len(self.train) - 2} or a longer text")

    def check_eval_length(self, length: int) -> None:
        """One evaluation window of ``length`` predicted characters must fit the validation text."""
        if length + 1 > len(self.valid):
            raise ValueError(f"test length {length} exceeds the {len(self.valid) - 1} validation characters of "
                             f"{self.path} (the last 10% of {len(self.train) + len(self.valid)}); give test lengths "
                             f"of at most {len(self.valid) - 1} or a longer text")

    def train_batch(self, length: int, batch_size: int, seed: int, step: int) -> Batch:
        self.check_context(length)
        gen = torch.Generator().manual_seed(_stream(seed, step, 2))
        start = torch.randint(0, len(self.train) - length - 1, (batch_size,), generator=gen)
        idx = start[:, None] + torch.arange(length + 1)  # (B, T + 1)
        window = self.train[idx]
        return Batch(inputs=window[:, :-1], targets=window[:, 1:])

    def eval_windows(self, length: int, max_tokens: int) -> Batch:
        """Non-overlapping windows of ``length`` predicted tokens over the first ``max_tokens`` of validation
        text (rounded down to whole windows, at least one)."""
        self.check_eval_length(length)
        count = max(1, min(max_tokens, len(self.valid) - 1) // length)
        idx = torch.arange(count)[:, None] * length + torch.arange(length + 1)  # (N, T + 1)
        window = self.valid[idx]
        return Batch(inputs=window[:, :-1], targets=window[:, 1:])
