"""Shaw et al.'s causal attention computed exactly without a (T, T) bias or weights: forward and backward.

With a^K_b replaced by a^K_b - a^K_0 every logit of row p moves by q_p . a^K_0, which softmax cancels. Then the
keys at distance k or more to the left (bucket 0) carry no bias at all: query p attends to keys ``[0, p - k]``
through the fused causal kernel (queries shifted by k against the keys), which also reports each row's
log-sum-exp. The k nearest keys ``(p - k, p]`` (buckets 1 .. k, distances -(k-1) .. 0) form a ``(B, H, T, k)``
band done by hand. The two softmax pieces merge through their log-sum-exps, as blockwise attention does; the value
term is the band's weights times a^V_1..k plus the far keys' whole weight mass times a^V_0.

The backward is the same split. For the far keys the kernel's own backward is exact when it is handed the merged
log-sum-exp and, as its output, ``z - a^V_0`` (its row term ``D_p = g_p . out_p`` must then be the full
``g_p . z_p`` minus the a^V_0 part every far key's value carries); the band's gradients are done by hand.

The band products go through blocks of n queries against the ``n + k - 1`` keys a block can need (a "strip"), of
which each block keeps the diagonal band -- a strided view.

Legend: B batch, H heads, T length, Dh head width, k the clip distance, R = 2k + 1 buckets.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["banded_causal_attention"]

#: Queries per block of the band products (at least k - 1, so that a strip overlaps only its neighbour).
_STRIP_BLOCK = 32


def _block(band: int) -> int:
    return max(_STRIP_BLOCK, band - 1)


def _strips(x: Tensor, band: int) -> tuple[Tensor, int]:
    """Rows of ``x`` ``(B, H, T, Dh)`` as ``(B, H, nb, Dh, w)`` windows of ``w = n + band - 1`` rows (block i's
    keys ``i n - band + 1 .. i n + n - 1``, zero before the first and after the last), and ``nb``."""
    t, n = x.shape[2], _block(band)
    blocks = -(-t // n)
    return F.pad(x, (0, 0, band - 1, blocks * n - t)).unfold(2, n + band - 1, n), blocks


def _diagonal(full: Tensor, band: int) -> Tensor:
    """The band ``r, r .. r + band - 1`` of each block of a contiguous ``(B, H, nb, n, w)``, as a strided view."""
    b_, h, blocks, n, w = full.shape
    s = full.stride()
    return full.as_strided((b_, h, blocks, n, band), (s[0], s[1], s[2], w + 1, 1))  # (B, H, nb, n, band)


def _blocks_of(x: Tensor, n: int) -> Tensor:
    """``(B, H, T, C)`` -> ``(B, H, nb, n, C)``, zero rows added at the end."""
    b_, h, t, c = x.shape
    pad = -t % n
    return (F.pad(x, (0, 0, 0, pad)) if pad else x).reshape(b_, h, (t + pad) // n, n, c)


def near_logits(q: Tensor, k: Tensor, band: int) -> Tensor:
    """``out[..., p, d] = q_p . k_(p - band + 1 + d)``: ``(B, H, T, Dh)`` x2 -> ``(B, H, T, band)``."""
    b_, h, t, _ = q.shape
    strips, blocks = _strips(k, band)  # (B, H, nb, Dh, w)
    full = torch.matmul(_blocks_of(q, _block(band)), strips).contiguous()  # (B, H, nb, n, w)
    return _diagonal(full, band).reshape(b_, h, -1, band)[:, :, :t]  # (B, H, T, band)


def _spread_band(weights: Tensor) -> Tensor:
    """Band ``(B, H, T, band)`` -> zero-padded strips ``(B, H, nb, n, w)`` holding it on their diagonals."""
    b_, h, _, band = weights.shape
    wb = _blocks_of(weights, _block(band))  # (B, H, nb, n, band)
    full = weights.new_zeros(*wb.shape[:-1], wb.shape[-2] + band - 1)  # (B, H, nb, n, w)
    _diagonal(full, band).copy_(wb)
    return full


def near_values(weights: Tensor, v: Tensor) -> Tensor:
    """``out[..., p, :] = sum_d weights[..., p, d] v_(p - band + 1 + d)``: ``(B, H, T, band)`` -> ``(B, H, T, Dh)``."""
    b_, h, t, band = weights.shape
    strips, _ = _strips(v, band)  # (B, H, nb, Dh, w)
    out = torch.matmul(_spread_band(weights), strips.transpose(-1, -2))  # (B, H, nb, n, Dh)
    return out.reshape(b_, h, -1, v.shape[-1])[:, :, :t]


def near_keys(weights: Tensor, x: Tensor) -> Tensor:
    """The adjoint of ``near_values`` in its second argument: ``out[..., j, :] = sum_d weights[..., p, d] x_p``
    over the rows ``p = j + band - 1 - d`` that see key j; ``(B, H, T, band)``, ``(B, H, T, Dh)`` -> ``(B, H, T, Dh)``."""
    b_, h, t, band = weights.shape
    n, dh = _block(band), x.shape[-1]
    part = torch.matmul(_spread_band(weights).transpose(-1, -2), _blocks_of(x, n))  # (B, H, nb, w, Dh)
    blocks = part.shape[2]
    # Strip i's column c is padded key i n + c: columns < n are block i, the other band - 1 start block i + 1.
    out = x.new_zeros(b_, h, (blocks + 1) * n, dh)
    out[:, :, : blocks * n].view(b_, h, blocks, n, dh).add_(part[:, :, :, :n])
    out[:, :, n:].view(b_, h, blocks, n, dh)[:, :, :, : band - 1].add_(part[:, :, :, n:])
    return out[:, :, band - 1 : band - 1 + t]  # (B, H, T, Dh)


def _flash(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The fused CPU kernel, causal, that also returns the log-sum-exp ``(B, H, T)`` (float32 or float64)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)


class _BandedAttention(torch.autograd.Function):
    """Forward and backward of the banded causal attention (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, key_table: Tensor, value_table: Tensor | None,
                kk: int) -> Tensor:
        t, acc = q.shape[2], torch.promote_types(q.dtype, torch.float32)  # softmax in float32 (float64 stays)
        scale = 1.0 / math.sqrt(q.shape[-1])
        shifted = (key_table[1 : kk + 1] - key_table[:1]).to(q.dtype)  # (k, Dh): a^K_b - a^K_0, buckets 1..k
        near = (near_logits(q, k, kk) + torch.matmul(q, shifted.t())).to(acc) * scale  # (B, H, T, k)
        if kk > 1:  # keys before the first: row p < k - 1 has k - 1 - p of them
            rows = min(t, kk - 1)
            near[:, :, :rows].masked_fill_(torch.arange(kk) < (kk - 1) - torch.arange(rows)[:, None], -math.inf)
        top = near.amax(dim=-1)  # (B, H, T): finite, every query sees its own key
        weights = near.sub_(top.unsqueeze(-1)).exp_()  # (B, H, T, k), unnormalized
        total = top + weights.sum(dim=-1).log()  # (B, H, T): log-sum-exp of the band, then of all keys
        far = None
        if t > kk:  # query p >= k over keys [0, p - k]: a square causal problem of T - k rows
            out_far, lse_far = _flash(q[:, :, kk:], k[:, :, : t - kk], v[:, :, : t - kk], scale)
            total[:, :, kk:] = torch.logaddexp(total[:, :, kk:], lse_far)
            far = torch.exp(lse_far - total[:, :, kk:]).unsqueeze(-1)  # (B, H, T-k, 1): far keys' weight mass
        weights *= torch.exp(top - total).unsqueeze(-1)  # normalized over all keys
        out = near_values(weights.to(v.dtype), v).to(acc)  # (B, H, T, Dh)
        if far is not None:
            out[:, :, kk:] += far * out_far
        if value_table is not None:
            table = value_table.to(acc)
            out += torch.matmul(weights, table[1 : kk + 1])
            if far is not None:
                out[:, :, kk:] += far * table[0]
        ctx.save_for_backward(q, k, v, key_table, value_table, weights, total, far, out)
        ctx.kk, ctx.scale = kk, scale
        return out.to(q.dtype)  # (B, H, T, Dh)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, key_table, value_table, weights, total, far, out = ctx.saved_tensors
        kk, scale, t = ctx.kk, ctx.scale, q.shape[2]
        acc = out.dtype
        g = grad.to(acc)  # (B, H, T, Dh)
        row = (g * out).sum(dim=-1, keepdim=True)  # (B, H, T, 1): D_p = g_p . z_p
        seen = near_logits(grad.to(v.dtype), v, kk).to(acc)  # (B, H, T, k): g_p . v of each band key
        if value_table is not None:
            seen += torch.matmul(g, value_table.to(acc)[1 : kk + 1].t())  # + g_p . a^V_(d+1)
        dlogits = weights * (seen - row) * scale  # (B, H, T, k): d loss / d (q . k + q . shifted a^K), scaled
        shifted = (key_table[1 : kk + 1] - key_table[:1]).to(acc)  # (k, Dh)
        dq = near_values(dlogits, k.to(acc)) + torch.matmul(dlogits, shifted)  # (B, H, T, Dh)
        dk = near_keys(dlogits, q.to(acc))
        dv = near_keys(weights, g)
        d_shifted = dlogits.flatten(0, 2).t() @ q.to(acc).flatten(0, 2)  # (k, Dh)
        d_key = torch.zeros_like(key_table, dtype=acc)
        d_key[1 : kk + 1] = d_shifted
        d_key[0] = -d_shifted.sum(dim=0)
        d_value = None
        if value_table is not None:
            d_value = torch.zeros_like(value_table, dtype=acc)
            d_value[1 : kk + 1] = weights.flatten(0, 2).t() @ g.flatten(0, 2)
        if far is not None:  # the kernel's backward, with the merged log-sum-exp and z - a^V_0 as its output
            z = out[:, :, kk:]
            if value_table is not None:
                z = z - value_table.to(acc)[0]
                d_value[0] = (far * g[:, :, kk:]).sum(dim=(0, 1, 2))
            dq_far, dk_far, dv_far = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad[:, :, kk:].contiguous(), q[:, :, kk:], k[:, :, : t - kk], v[:, :, : t - kk],
                z.to(q.dtype).contiguous(), total[:, :, kk:].contiguous(), 0.0, True, scale=scale)
            dq[:, :, kk:] += dq_far
            dk[:, :, : t - kk] += dk_far
            dv[:, :, : t - kk] += dv_far
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), d_key.to(key_table.dtype),
                None if d_value is None else d_value.to(value_table.dtype), None)


def banded_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, key_table: Tensor, value_table: Tensor | None, max_distance: int
) -> Tensor:
    """Causal self-attention with Shaw et al.'s key and value terms over ``(B, H, T, Dh)`` q, k, v at plain
    positions ``0 .. T-1`` (any common start), no dropout; differentiable in q, k, v and both tables."""
    return _BandedAttention.apply(q, k, v, key_table, value_table, max_distance)
