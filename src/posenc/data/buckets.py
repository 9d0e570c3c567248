"""Batching by tokens: examples sorted by length, cut into batches under a token budget, batches shuffled.

Why: translation pairs vary from 3 to 100+ tokens. A fixed number of sentences per batch either wastes most of
each padded tensor or runs out of memory on the long ones; grouping similar lengths and capping the padded size
(``batch size x longest sequence``) keeps the work per step even and the padding small (Vaswani et al. 2017,
section 5.1: "sentence pairs were batched together by approximate sequence length"; fairseq's ``--max-tokens``).

Order is a pure function of ``(seed, epoch)``: examples of equal length are permuted before a stable sort, then
the batches are shuffled. A position in the stream (a batch count across epochs) is all that resuming needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["TokenBatcher"]


def _lengths(name: str, values: Sequence[int]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of lengths, got shape {arr.shape}")
    if arr.size and int(arr.min()) < 1:
        raise ValueError(f"{name} holds length {int(arr.min())}; every length must be >= 1")
    return arr


class TokenBatcher:
    """Batches of example indices whose padded size ``len(batch) * max(longest src, longest tgt)`` stays within
    ``max_tokens``; every example appears exactly once per epoch.

    ``src_lengths``/``tgt_lengths`` are the lengths of the tensors as collated (e.g. source + EOS, target + 1).
    """

    def __init__(
        self,
        *,
        src_lengths: Sequence[int],
        tgt_lengths: Sequence[int],
        max_tokens: int,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.src_lengths = _lengths("src_lengths", src_lengths)
        self.tgt_lengths = _lengths("tgt_lengths", tgt_lengths)
        if self.src_lengths.shape != self.tgt_lengths.shape:
            raise ValueError(f"{self.src_lengths.size} source lengths but {self.tgt_lengths.size} target lengths")
        if self.src_lengths.size == 0:
            raise ValueError("no examples to batch")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise TypeError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
        self.cost = np.maximum(self.src_lengths, self.tgt_lengths)  # padded width of each example alone
        longest = int(self.cost.max())
        if max_tokens < longest:
            raise ValueError(
                f"max_tokens={max_tokens} is smaller than the longest example ({longest} tokens, index "
                f"{int(self.cost.argmax())}); raise max_tokens or filter long examples"
            )
        self.max_tokens = max_tokens
        self.seed = seed
        self.shuffle = shuffle
        # Boundaries depend on the sorted lengths only, so every epoch has the same number of batches.
        self._bounds = self._cut(np.sort(self.cost, kind="stable"))

    def _cut(self, sorted_cost: np.ndarray) -> list[tuple[int, int]]:
        bounds, start, width = [], 0, 0
        for i, c in enumerate(sorted_cost.tolist()):
            width = max(width, c)
            if (i + 1 - start) * width > self.max_tokens:
                bounds.append((start, i))
                start, width = i, c
        bounds.append((start, len(sorted_cost)))
        return bounds

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._bounds)

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` (0-based), in the order they are served."""
        if not self.shuffle:
            order = np.argsort(self.cost, kind="stable")
            return [order[a:b].tolist() for a, b in self._bounds]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.cost.size)  # ties in length end up in a seeded random order
        order = perm[np.argsort(self.cost[perm], kind="stable")]
        batches = [order[a:b].tolist() for a, b in self._bounds]
        return [batches[i] for i in rng.permutation(len(batches))]

    def stream(self, start: int = 0) -> Iterator[tuple[int, list[int]]]:
        """Endless ``(position, indices)`` from batch ``start`` (counted across epochs); resume with the next
        position after the last one consumed."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative int, got {start!r}")
        n = len(self)
        epoch, offset = divmod(start, n)
        position = start
        while True:
            for indices in self.epoch(epoch)[offset:]:
                yield position, indices
                position += 1
            epoch, offset = epoch + 1, 0
