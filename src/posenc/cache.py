"""The key/value cache of incremental decoding.

Each self-attention layer keeps its keys and values in a preallocated buffer that doubles when full, so
appending T tokens one at a time costs O(T) copies in all, not O(T^2). A stack keeps, beside its layers'
buffers, the positions and the padding of every cached token: positions come from the cache, so they stay right
under left padding and per-sequence lengths. Cross-attention keys and values are computed once per source.

Legend: B batch, H heads, T cached length, Dh head width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["KVCache", "LayerCache", "StackCache"]


class KVCache:
    """Keys and values of one self-attention layer, ``(B, H, T, Dh)``, grown by doubling."""

    def __init__(self) -> None:
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        self.length = 0

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``(B, H, Tn, Dh)`` keys and values; return views of everything cached so far."""
        new_len = self.length + k.shape[2]
        if self._k is None or new_len > self.capacity or self._k.dtype != k.dtype:
            capacity = max(new_len, 2 * self.capacity, 16)
            b, h, _, dh = k.shape
            grown_k = k.new_empty(b, h, capacity, dh)
            grown_v = v.new_empty(b, h, capacity, v.shape[-1])
            if self._k is not None and self.length:
                grown_k[:, :, : self.length] = self._k[:, :, : self.length]
                grown_v[:, :, : self.length] = self._v[:, :, : self.length]
            self._k, self._v = grown_k, grown_v
        self._k[:, :, self.length : new_len] = k
        self._v[:, :, self.length : new_len] = v
        self.length = new_len
        return self._k[:, :, :new_len], self._v[:, :, :new_len]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders and repeats hypotheses)."""
        if self._k is not None:
            self._k = self._k.index_select(0, index)
            self._v = self._v.index_select(0, index)


@dataclass
class LayerCache:
    """What one decoder layer keeps between steps: its self-attention cache and the cross-attention K, V."""

    self_kv: KVCache = field(default_factory=KVCache)
    cross: tuple[Tensor, Tensor] | None = None

    def reorder(self, index: Tensor) -> None:
        self.self_kv.reorder(index)
        if self.cross is not None:
            self.cross = (self.cross[0].index_select(0, index), self.cross[1].index_select(0, index))


@dataclass
class StackCache:
    """The cache of a whole stack: one :class:`LayerCache` a layer, plus positions and padding of the keys."""

    layers: list[LayerCache]
    positions: Tensor | None = None  # (B, T) long: the position of every cached token
    padding: Tensor | None = None  # (B, T) bool: True where the cached token is padding

    @classmethod
    def empty(cls, num_layers: int) -> StackCache:
        return cls(layers=[LayerCache() for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return 0 if self.positions is None else self.positions.shape[1]

    def next_positions(self, padding: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
        """Positions of ``length`` new tokens: each sequence counts only its real (non-padding) tokens."""
        real = torch.ones(batch, length, dtype=torch.long, device=device) if padding is None else (~padding).long()
        seen = 0
        if self.padding is not None:
            seen = (~self.padding).long().sum(dim=1, keepdim=True)  # (B, 1) real tokens so far
        return (seen + real.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)

    def extend(self, positions: Tensor, padding: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Record new tokens' positions and padding; return those of every key, new ones included."""
        pad = padding if padding is not None else torch.zeros(positions.shape, dtype=torch.bool, device=positions.device)
        if self.positions is None:
            self.positions, self.padding = positions, pad
        else:
            self.positions = torch.cat([self.positions, positions], dim=1)
            self.padding = torch.cat([self.padding, pad], dim=1)
        return self.positions, (self.padding if bool(self.padding.any()) else None)

    def reorder(self, index: Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)
        if self.positions is not None:
            self.positions = self.positions.index_select(0, index)
            self.padding = self.padding.index_select(0, index)
