"""Relative position representations (Shaw, Uszkoreit & Vaswani, NAACL 2018).

The distance ``j - i`` is clipped to ``[-k, k]`` and looked up in two learned tables of width ``Dh`` shared by the
heads (section 3.3): a^K for keys and a^V for values. Attention becomes (eq. 4 and 3)

    e_ij = q_i . (k_j + a^K_ij) / sqrt(Dh)          z_i = sum_j alpha_ij (v_j + a^V_ij)

The key term ``q_i . a^K_ij / sqrt(Dh)`` depends on q, so it goes through the ``content_bias`` hook (it still reaches
the fused kernel as part of the float mask); the value term goes through ``value_term``, which needs the
attention weights, so attention takes its plain math path with this encoding. Both are computed per distance
bucket rather than per (i, j) pair: ``q @ a^K.T`` is ``(B, H, Tq, 2k+1)`` and then gathered; the weights are
summed per bucket and multiplied by a^V. Clipped indices of plain-range positions are cached.

Legend: B batch, H heads, Tq / Tk query / key length, Dh head width, R = 2k + 1 relative buckets.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_positive_int
from ._relative import RangeCache, relative_distance
from .base import PositionalEncoding, register

__all__ = ["Shaw"]


@register("shaw")
class Shaw(PositionalEncoding):
    """Clipped relative position embeddings on keys and values."""

    def __init__(self, *, head_dim: int, max_distance: int = 16, values: bool = True, init_std: float = 0.02) -> None:
        super().__init__()
        check_positive_int("head_dim", head_dim)
        check_positive_int("max_distance", max_distance)
        self.head_dim, self.max_distance, self.values = head_dim, max_distance, bool(values)
        n = 2 * max_distance + 1
        self.key_table = nn.Parameter(torch.randn(n, head_dim) * init_std)  # a^K, (R, Dh)
        self.value_table = nn.Parameter(torch.randn(n, head_dim) * init_std) if values else None  # a^V
        self._cache = RangeCache()

    def index(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Clipped ``j - i`` shifted into ``[0, 2k]``: ``(Tq, Tk)`` or ``(B, Tq, Tk)`` long."""
        k = self.max_distance

        def compute(qp: Tensor, kp: Tensor) -> Tensor:
            return relative_distance(qp, kp).clamp(-k, k) + k

        return self._cache.get(q_pos, k_pos, compute)

    @staticmethod
    def _per_batch(idx: Tensor, like: Tensor) -> Tensor:
        """Index ``(Tq, Tk)`` or ``(B, Tq, Tk)`` -> ``(B, H, Tq, Tk)`` matching ``like``."""
        if idx.dim() == 3:
            idx = idx[:, None]
        b, h, tq = like.shape[:3]
        return idx.expand(b, h, tq, idx.shape[-1])

    def content_bias(self, q: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        per_bucket = torch.matmul(q, self.key_table.to(q.dtype).t())  # (B, H, Tq, R)
        idx = self._per_batch(self.index(q_pos, k_pos), per_bucket)
        return torch.gather(per_bucket, -1, idx) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)

    def value_term(self, weights: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        if self.value_table is None:
            return None
        idx = self._per_batch(self.index(q_pos, k_pos), weights)
        per_bucket = weights.new_zeros(*weights.shape[:3], self.value_table.shape[0])
        per_bucket = per_bucket.scatter_add(-1, idx, weights)  # (B, H, Tq, R): weight mass per distance
        return torch.matmul(per_bucket, self.value_table.to(weights.dtype))  # (B, H, Tq, Dh)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_distance={self.max_distance}, values={self.values}"
