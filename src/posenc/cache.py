"""The key/value cache of incremental decoding.

Each self-attention layer keeps its keys and values in a preallocated buffer that doubles when full, so
appending T tokens one at a time costs O(T) copies and O(log T) reallocations in all, not O(T^2). A stack
keeps, beside its layers' buffers, the positions and the padding of every cached token (in buffers grown the
same way) and each sequence's next position (its last real token's + 1): positions come from the cache, so
they stay right under left padding, per-sequence lengths and a prompt given explicit positions.
Cross-attention keys and values are computed once per source and kept as they are.

Encodings whose rotation depends on the current length (dynamic NTK) set ``rotate_after_cache``: attention
then stores their keys *before* rotation and rotates every cached key again at each step, with the scale of
that step (bloc97 2023, "Dynamically Scaled RoPE"; cached keys rotated with a stale base are the classic bug).

Legend: B batch, H heads, T cached length, Dh head width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["GrowingBuffer", "KVCache", "LayerCache", "StackCache"]

_MIN_CAPACITY = 16


class GrowingBuffer:
    """A tensor that grows along one dimension by doubling its storage; ``view`` is the filled part.

    ``reallocations`` counts how often the storage was replaced by a larger one (O(log T) for T appends).
    ``reserve(n)`` asks the first allocation to make room for ``n`` entries at once.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.data: Tensor | None = None
        self.length = 0
        self.reallocations = 0
        self._reserved = 0

    @property
    def capacity(self) -> int:
        return 0 if self.data is None else self.data.shape[self.dim]

    def reserve(self, n: int) -> None:
        """Make room for ``n`` entries now (or at the first append, when the other sizes become known)."""
        self._reserved = max(self._reserved, n)
        if self.data is not None and n > self.capacity:
            self._grow(n)

    def _grow(self, needed: int, like: Tensor | None = None) -> None:
        capacity = max(needed, 2 * self.capacity, _MIN_CAPACITY, self._reserved)
        src = self.data if self.data is not None else like
        shape = list(src.shape)
        shape[self.dim] = capacity
        grown = src.new_empty(shape)
        if self.data is not None and self.length:
            grown.narrow(self.dim, 0, self.length).copy_(self.data.narrow(self.dim, 0, self.length))
        self.data = grown
        self.reallocations += 1

    def append(self, x: Tensor) -> Tensor:
        """Append ``x`` along ``dim``; return a view of everything held so far."""
        new_len = self.length + x.shape[self.dim]
        if self.data is None or self.data.dtype != x.dtype or self.data.device != x.device:
            if self.data is not None:  # a dtype or device change (autocast toggled): keep what is held
                self.data = self.data.to(dtype=x.dtype, device=x.device)
            else:
                self._grow(new_len, like=x)
        if new_len > self.capacity:
            self._grow(new_len)
        self.data.narrow(self.dim, self.length, x.shape[self.dim]).copy_(x)
        self.length = new_len
        return self.data.narrow(self.dim, 0, new_len)

    def view(self) -> Tensor | None:
        return None if self.data is None else self.data.narrow(self.dim, 0, self.length)

    def select_rows(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (dimension 0) of the filled part, in that order; capacity is kept."""
        if self.data is not None:
            self.data = self.data.index_select(0, index)


class KVCache:
    """Keys and values of one self-attention layer, ``(B, H, T, Dh)``, grown by doubling."""

    def __init__(self) -> None:
        self._k = GrowingBuffer(dim=2)
        self._v = GrowingBuffer(dim=2)

    @property
    def length(self) -> int:
        return self._k.length

    @property
    def capacity(self) -> int:
        return self._k.capacity

    @property
    def reallocations(self) -> int:
        return self._k.reallocations

    def reserve(self, n: int) -> None:
        self._k.reserve(n)
        self._v.reserve(n)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``(B, H, Tn, Dh)`` keys and values; return views of everything cached so far."""
        return self._k.append(k), self._v.append(v)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders and repeats hypotheses)."""
        self._k.select_rows(index)
        self._v.select_rows(index)


@dataclass
class LayerCache:
    """What one decoder layer keeps between steps: its self-attention cache and the cross-attention K, V."""

    self_kv: KVCache = field(default_factory=KVCache)
    cross: tuple[Tensor, Tensor] | None = None

    def reorder(self, index: Tensor, *, cross: bool = True) -> None:
        """Keep batch rows ``index``; ``cross=False`` leaves the cross-attention K, V alone (beam search
        reorders hypotheses within a source, whose K, V are all the same)."""
        self.self_kv.reorder(index)
        if cross and self.cross is not None:
            self.cross = (self.cross[0].index_select(0, index), self.cross[1].index_select(0, index))


@dataclass
class StackCache:
    """The cache of a whole stack: one :class:`LayerCache` a layer, plus positions and padding of the keys."""

    layers: list[LayerCache]
    _positions: GrowingBuffer = field(default_factory=lambda: GrowingBuffer(dim=1), repr=False)
    _padding: GrowingBuffer = field(default_factory=lambda: GrowingBuffer(dim=1), repr=False)
    _next: Tensor | None = field(default=None, repr=False)  # (B, 1) long: each sequence's last real position + 1
    has_padding: bool = False  # whether any cached token is padding
    #: (source padding tensor, (batch, queries, keys), its cross-attention mask): a decoder reuses the mask
    #: while it is handed the very same padding tensor; a reorder that touches the sources drops it.
    memory_mask: tuple[Tensor | None, tuple[int, int, int], Any] | None = field(default=None, repr=False)

    @classmethod
    def empty(cls, num_layers: int, *, capacity: int = 0) -> StackCache:
        cache = cls(layers=[LayerCache() for _ in range(num_layers)])
        if capacity:
            cache.reserve(capacity)
        return cache

    def reserve(self, n: int) -> None:
        """Preallocate room for ``n`` tokens in every buffer (generation knows its final length)."""
        for layer in self.layers:
            layer.self_kv.reserve(n)
        self._positions.reserve(n)
        self._padding.reserve(n)

    @property
    def length(self) -> int:
        return self._positions.length

    @property
    def positions(self) -> Tensor | None:
        """``(B, T)`` long: the position of every cached token."""
        return self._positions.view()

    @property
    def padding(self) -> Tensor | None:
        """``(B, T)`` bool: True where the cached token is padding."""
        return self._padding.view()

    def next_positions(self, padding: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
        """Positions of ``length`` new tokens: each sequence continues from its last real (non-padding) cached
        token's position -- not from the count of its tokens, which differs after a prompt given explicit
        positions -- and counts only its real new tokens."""
        if padding is None:
            steps = torch.arange(length, device=device)  # (T,)
            return steps.expand(batch, length) if self._next is None else self._next + steps  # (B, T)
        start = 0 if self._next is None else self._next
        return (start + (~padding).long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)

    def extend(self, positions: Tensor, padding: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Record new tokens' positions and padding; return those of every key, new ones included."""
        batch, length = positions.shape
        self._next = self._continued(positions, padding)
        if padding is None:
            padding = torch.zeros(batch, length, dtype=torch.bool, device=positions.device)
        elif not self.has_padding:
            self.has_padding = bool(padding.any())
        k_pos = self._positions.append(positions)
        k_pad = self._padding.append(padding)
        return k_pos, (k_pad if self.has_padding else None)

    def _continued(self, positions: Tensor, padding: Tensor | None) -> Tensor:
        """``(B, 1)``: each sequence's last real position + 1 once ``positions`` ``(B, T)`` are cached; a sequence
        with no real new token keeps its value (0 before any)."""
        batch, length = positions.shape
        before = torch.zeros(batch, 1, dtype=torch.long, device=positions.device) if self._next is None else self._next
        if length == 0:
            return before
        if padding is None:
            return positions[:, -1:] + 1
        real = (~padding).long()
        last = real.cumsum(dim=1).argmax(dim=1, keepdim=True)  # (B, 1): the first index of the top count, the last real
        return torch.where(real.any(dim=1, keepdim=True), positions.gather(1, last) + 1, before)

    def reorder(self, index: Tensor, *, cross: bool = True) -> None:
        """Keep batch rows ``index`` of every buffer (see :meth:`LayerCache.reorder` for ``cross``)."""
        for layer in self.layers:
            layer.reorder(index, cross=cross)
        if cross:
            self.memory_mask = None
        self._positions.select_rows(index)
        self._padding.select_rows(index)
        if self._next is not None:
            self._next = self._next.index_select(0, index)
