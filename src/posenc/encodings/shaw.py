"""Relative position representations (Shaw, Uszkoreit & Vaswani, NAACL 2018).

The distance ``j - i`` is clipped to ``[-k, k]`` and looked up in two learned tables of width ``Dh`` shared by the
heads (section 3.3): a^K for keys and a^V for values. Attention becomes (eq. 4 and 3)

    e_ij = q_i . (k_j + a^K_ij) / sqrt(Dh)          z_i = sum_j alpha_ij (v_j + a^V_ij)

The key term ``q_i . a^K_ij / sqrt(Dh)`` depends on q, so it goes through the ``content_bias`` hook and reaches the
fused kernel as part of the float mask. The value term goes through ``value_term``, which needs the attention
weights, so with ``values=True`` attention takes its plain math path; with ``values=False`` (keys only, the paper's
ablation) attention never asks for the weights and hands the bias to ``scaled_dot_product_attention``, which picks
its kernel (on CPU, a bias that needs gradients sends it to its own math implementation while training).

Both terms are computed per distance bucket rather than per (i, j) pair, as the paper suggests (section 3.3):
``q @ a^K.T`` is ``(B, H, Tq, 2k+1)`` and is *spread* over the pairs; the weights are *collected* per bucket
``(B, H, Tq, 2k+1)`` and multiplied by a^V. Spread and collect are adjoint, so each one's backward is the other.
For arbitrary positions they are a gather and a scatter-add over all B·H·Tq·Tk pairs; the scatter-add (in the key
term's backward and the value term's forward) is the slow part on CPU. When the positions are plain ranges (an
unpadded batch) the buckets form a clipped Toeplitz pattern: in a block of rows, the keys far to the left all
fall in bucket 0 and those far to the right in bucket 2k, so those parts are broadcast copies (spread) and row sums
(collect); only a strip of width ``block + 2k - 1`` around the diagonal is gathered or scattered. Same values as
the general path (spread bit for bit; collect up to the order of a sum), in a third (key term) to a half (value term)
of the time at T=512 on CPU, forward and backward, with no (Tq, Tk) temporary beyond the result. The clipped indices of plain ranges are cached.

Under a plain causal mask without dropout, ``causal_attention`` avoids the math path altogether (see
``_shaw_banded``): shifting a^K by a^K_0 changes every logit of a row by the same q_i . a^K_0, which softmax
ignores, so the keys farther than k to the left need no bias at all and go through the fused kernel, forward and
backward.

Legend: B batch, H heads, Tq / Tk query / key length, Dh head width, R = 2k + 1 relative buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_init_std, check_positive_int
from ._relative import RangeCache, as_range, relative_distance
from ._shaw_banded import banded_causal_attention
from .base import PositionalEncoding, register

__all__ = ["Shaw"]

#: Rows per block of the range layout: small enough that each block's near-diagonal strip stays narrow, large
#: enough that the per-block calls cost little (16-64 measure alike on CPU at T=512).
_BLOCK_ROWS = 32


@dataclass(frozen=True)
class _RangeLayout:
    """The clipped buckets when queries sit at ``q0 + i`` and keys at ``k0 + j`` (``offset = k0 - q0``).

    Row by row the buckets are Toeplitz: bucket 0 on a prefix of the keys, the band ``|j - i + offset| < k``, bucket
    2k on the suffix. Taken in blocks of rows, a block's columns split into a left rectangle that is bucket 0 for
    every row of the block, a right rectangle that is bucket 2k for all of them, and a strip of width at most
    ``block + 2k - 1`` around the diagonal; only the strip needs per-pair indices.
    """

    index: Tensor  # (Tq, Tk) long: clipped j - i + offset, shifted into [0, 2k]
    offset: int
    max_distance: int

    def _blocks(self) -> Iterator[tuple[slice, int, int]]:
        """(rows, c0, c1): columns ``< c0`` are bucket 0 and ``>= c1`` bucket 2k for every row of the block."""
        k, off = self.max_distance, self.offset
        tq, tk = self.index.shape
        for i0 in range(0, tq, _BLOCK_ROWS):
            i1 = min(tq, i0 + _BLOCK_ROWS)
            c0 = min(max(i0 - k - off + 1, 0), tk)  # j <= i - k - offset for every i >= i0
            c1 = min(max(i1 - 1 + k - off, c0), tk)  # j >= i + k - offset for every i < i1
            yield slice(i0, i1), c0, c1

    def spread(self, per_bucket: Tensor) -> Tensor:
        """``(B, H, Tq, R)`` -> ``(B, H, Tq, Tk)``: the value of each pair's bucket."""
        tq, tk = self.index.shape
        out = per_bucket.new_empty(*per_bucket.shape[:-2], tq, tk)
        for rows, c0, c1 in self._blocks():
            src = per_bucket[..., rows, :]  # (B, H, n, R)
            if c0:
                out[..., rows, :c0] = src[..., :1]  # broadcast copy, no index
            if c1 < tk:
                out[..., rows, c1:] = src[..., -1:]
            if c1 > c0:
                idx = self.index[rows, c0:c1]
                out[..., rows, c0:c1] = torch.gather(src, -1, idx.expand(*src.shape[:-1], c1 - c0))
        return out

    def collect(self, pairs: Tensor) -> Tensor:
        """``(B, H, Tq, Tk)`` -> ``(B, H, Tq, R)``: the sum over the pairs of each bucket (adjoint of spread)."""
        out = pairs.new_zeros(*pairs.shape[:-1], 2 * self.max_distance + 1)
        tk = self.index.shape[1]
        for rows, c0, c1 in self._blocks():
            dst = out[..., rows, :]  # (B, H, n, R), a view
            if c1 > c0:
                idx = self.index[rows, c0:c1]
                dst.scatter_add_(-1, idx.expand(*dst.shape[:-1], c1 - c0), pairs[..., rows, c0:c1])
            if c0:
                dst[..., 0] += pairs[..., rows, :c0].sum(-1)  # a row sum, no index
            if c1 < tk:
                dst[..., -1] += pairs[..., rows, c1:].sum(-1)
        return out


class _Spread(torch.autograd.Function):
    """``_RangeLayout.spread`` whose backward is ``collect`` (not the scatter-add gather's backward does)."""

    @staticmethod
    def forward(ctx: Any, per_bucket: Tensor, layout: _RangeLayout) -> Tensor:
        ctx.layout = layout
        return layout.spread(per_bucket)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _Collect.apply(grad, ctx.layout), None


class _Collect(torch.autograd.Function):
    """``_RangeLayout.collect`` whose backward is ``spread``."""

    @staticmethod
    def forward(ctx: Any, pairs: Tensor, layout: _RangeLayout) -> Tensor:
        ctx.layout = layout
        return layout.collect(pairs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _Spread.apply(grad, ctx.layout), None


@register("shaw")
class Shaw(PositionalEncoding):
    """Clipped relative position embeddings on keys and values."""

    def __init__(self, *, head_dim: int, max_distance: int = 16, values: bool = True, init_std: float = 0.02) -> None:
        super().__init__()
        check_positive_int("head_dim", head_dim)
        check_positive_int("max_distance", max_distance)
        check_init_std(init_std)
        self.head_dim, self.max_distance, self.values = head_dim, max_distance, bool(values)
        n = 2 * max_distance + 1
        self.key_table = nn.Parameter(torch.randn(n, head_dim) * init_std)  # a^K, (R, Dh)
        self.value_table = nn.Parameter(torch.randn(n, head_dim) * init_std) if values else None  # a^V
        self._cache = RangeCache()

    @property
    def uses_value_term(self) -> bool:
        """Keys only (``values=False``) needs no attention weights, so attention keeps the fused kernel."""
        return self.value_table is not None

    def index(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Clipped ``j - i`` shifted into ``[0, 2k]``: ``(Tq, Tk)`` or ``(B, Tq, Tk)`` long."""
        k = self.max_distance

        def compute(qp: Tensor, kp: Tensor) -> Tensor:
            return relative_distance(qp, kp).clamp(-k, k) + k

        return self._cache.get(q_pos, k_pos, compute)

    def _layout(self, q_pos: Tensor, k_pos: Tensor) -> _RangeLayout | None:
        """The bucket layout when both position tensors are plain ranges, else None."""
        qr, kr = as_range(q_pos), as_range(k_pos)
        if qr is None or kr is None or not (qr[1] and kr[1]):
            return None
        return _RangeLayout(index=self.index(q_pos, k_pos), offset=kr[0] - qr[0], max_distance=self.max_distance)

    @staticmethod
    def _per_batch(idx: Tensor, like: Tensor) -> Tensor:
        """Index ``(Tq, Tk)`` or ``(B, Tq, Tk)`` -> ``(B, H, Tq, Tk)`` matching ``like``."""
        if idx.dim() == 3:
            idx = idx[:, None]
        b, h, tq = like.shape[:3]
        return idx.expand(b, h, tq, idx.shape[-1])

    def content_bias(self, q: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        # Scaled per bucket, before spreading: (Tq, R) divisions instead of (Tq, Tk).
        per_bucket = torch.matmul(q, self.key_table.to(q.dtype).t()) / math.sqrt(self.head_dim)  # (B, H, Tq, R)
        layout = self._layout(q_pos, k_pos)
        if layout is not None:
            return _Spread.apply(per_bucket, layout)  # (B, H, Tq, Tk)
        idx = self._per_batch(self.index(q_pos, k_pos), per_bucket)
        return torch.gather(per_bucket, -1, idx)  # (B, H, Tq, Tk)

    def value_term(self, weights: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        if self.value_table is None:
            return None
        layout = self._layout(q_pos, k_pos)
        if layout is not None:
            per_bucket = _Collect.apply(weights, layout)  # (B, H, Tq, R): weight mass per distance
        else:
            idx = self._per_batch(self.index(q_pos, k_pos), weights)
            per_bucket = weights.new_zeros(*weights.shape[:3], self.value_table.shape[0])
            per_bucket = per_bucket.scatter_add(-1, idx, weights)  # (B, H, Tq, R): weight mass per distance
        return torch.matmul(per_bucket, self.value_table.to(weights.dtype))  # (B, H, Tq, Dh)

    def causal_attention(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        qr, kr = as_range(q_pos), as_range(k_pos)
        if qr is None or qr != kr or q.shape[-2] != k.shape[-2] or q.device.type != "cpu":
            return None  # the fused kernel that reports its log-sum-exp is CPU's; other devices: the generic path
        if torch.is_grad_enabled() and q.dtype not in (torch.float32, torch.float64):
            return None  # the fused kernel's bf16/fp16 backward is slower on CPU than the math path
        return banded_causal_attention(q, k, v, self.key_table, self.value_table, self.max_distance)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_distance={self.max_distance}, values={self.values}"
