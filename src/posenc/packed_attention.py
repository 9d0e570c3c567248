"""The fast path's attention with dropout: heads packed once, gradients written in place (one autograd node).

    Attention(Q, K, V) = dropout(softmax(Q K^T / sqrt(d_k) + M)) V        (Vaswani et al. 2017, eq. 1)

On CPU, SDPA cannot apply dropout in its fused kernel, so training attention with dropout runs the math path:
the weights are materialized. Built from separate torch operations, that path also copies every head tensor
on its own: Q, K and V into batched-product layout in the forward (plus a pass that scales Q), then each of
their gradients back again, stacked, and copied once more into the projection's ``(B, T, 3D)`` layout in the
backward; and it keeps three (B*H, Tq, Tk) tensors for the backward (the weights, the mask, the dropped
weights). Here:

* the projection's output is copied into head-major layout once (``(3, B*H, T, Dh)``), and the backward writes
  dQ, dK and dV straight into one buffer of that layout, copied back once;
* the scales ride in the products (``baddbmm``'s ``alpha``): 1/sqrt(Dh) in the scores' product, the dropout's
  1/(1-p) in the products with the dropped weights, forward and backward, instead of passes over Q and the
  weights;
* the weights are dropped in one pass as the mask's words are drawn (:func:`posenc.dropout.keep_product`,
  ``W * m``, exact in any dtype), and no mask is kept: where ``W * m > 0`` is where the mask lets the gradient
  through, up to entries whose weight is 0, whose gradient the softmax's backward multiplies by that 0. (A
  dropped entry's gradient is thereby exactly 0 even where ``dO V^T`` is not finite: with an inf in V or in the
  incoming gradient, dQ and dK can stay finite here where the math path's ``NaN * 0`` spreads NaN.)

Same results as the math path to rounding (the scales act on products rather than on their inputs; tested
against the written-out formula in float64 and bf16, and against the general path). Measured at the base
config's shapes (B=16, H=8, T=128, Dh=64, causal self-attention, forward + backward, 2 threads, medians): fp32
23.1 -> 20.5 ms and 28.7 -> 24.7 ms per call (in two runs) against the node that kept the mask, which had
brought 30.4 ms down to 27.1 against the separate operations; bf16 within noise (10.1 -> 10.5, 15.0 -> 14.2 ms).

Serves self- and cross-attention whose encoding adds nothing inside attention (absolute encodings, NoPE) with
no mask, a causal mask, or masks without fully blocked rows; everything else takes the general path.

Legend: B batch, H heads, Tq / Tk query / key length, D model width, Dh head width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .dropout import keep_product, keep_scale, representable

__all__ = ["packed_attention"]


def _split(t: Tensor, parts: int, heads: int) -> Tensor:
    """``(B, T, parts*D)`` -> contiguous ``(parts, B*H, T, Dh)``: one copy."""
    b, n, width = t.shape
    dh = width // (parts * heads)
    return t.reshape(b, n, parts, heads, dh).permute(2, 0, 3, 1, 4).reshape(parts, b * heads, n, dh)


def _merge(t: Tensor, batch: int) -> Tensor:
    """``(parts, B*H, T, Dh)`` -> ``(B, T, parts*D)``: the inverse of :func:`_split`, one copy."""
    parts, bh, n, dh = t.shape
    heads = bh // batch
    return t.view(parts, batch, heads, n, dh).permute(1, 3, 0, 2, 4).reshape(batch, n, parts * heads * dh)


def _zeros(like: Tensor, *shape: int) -> Tensor:
    """A zero of ``like``'s dtype expanded to ``shape`` (no memory): ``baddbmm``'s ignored input at ``beta = 0``."""
    return like.new_zeros(()).expand(*shape)


class _PackedAttention(torch.autograd.Function):
    """``(x_q, x_kv) -> (B, Tq, D)``; ``x_kv`` None means ``x_q`` is the fused ``(B, T, 3D)`` projection."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x_q: Tensor, x_kv: Tensor | None, heads: int, mask: Tensor | None, p: float
    ) -> Tensor:
        b = x_q.shape[0]
        with torch.autocast(x_q.device.type, enabled=False):  # the inputs' dtype throughout (bf16 under autocast)
            if x_kv is None:
                packed = (_split(x_q, 3, heads),)
                q, k, v = packed[0].unbind(0)  # 3 x (B*H, T, Dh)
            else:
                packed = (_split(x_q, 1, heads), _split(x_kv, 2, heads))
                q, (k, v) = packed[0][0], packed[1].unbind(0)
            bh, tq, dh = q.shape
            scale = 1.0 / math.sqrt(dh)
            if mask is not None and mask.dim() == 2:  # (Tq, Tk): added by the product itself
                scores = torch.baddbmm(mask.to(q.dtype), q, k.transpose(1, 2), alpha=scale)  # (B*H, Tq, Tk)
            else:
                scores = torch.baddbmm(_zeros(q, bh, tq, k.shape[1]), q, k.transpose(1, 2), beta=0.0, alpha=scale)
                if mask is not None:  # (B|1, H|1, Tq, Tk)
                    scores.view(b, heads, tq, -1).add_(mask.to(q.dtype))
            weights = torch.softmax(scores, dim=-1)
            dropped = keep_product(weights, p)  # weights * m, unscaled: no mask kept
            kept = keep_scale(p)
            out = torch.baddbmm(_zeros(q, bh, tq, dh), dropped, v, beta=0.0, alpha=kept)  # (B*H, Tq, Dh)
        ctx.save_for_backward(*packed, weights, dropped)
        ctx.sizes = (b, scale, kept, x_kv is None)
        return _merge(out.unsqueeze(0), b)  # (B, Tq, D)

    @staticmethod
    @once_differentiable  # the products write into preallocated gradients: no second derivative through them
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        *packed, weights, dropped = ctx.saved_tensors
        b, scale, kept, fused = ctx.sizes
        heads = weights.shape[0] // b
        g = _split(grad, 1, heads)[0]  # (B*H, Tq, Dh)
        grads = [torch.empty_like(t) for t in packed]
        if fused:
            (q, k, v), (dq, dk, dv) = packed[0].unbind(0), grads[0].unbind(0)
        else:
            q, (k, v), dq, (dk, dv) = packed[0][0], packed[1].unbind(0), grads[0][0], grads[1].unbind(0)
        torch.baddbmm(dv, dropped.transpose(1, 2), g, beta=0.0, alpha=kept, out=dv)
        d_weights = torch.baddbmm(_zeros(g, *weights.shape), g, v.transpose(1, 2), beta=0.0, alpha=kept)
        # the mask's gradient: 0 where weights * m is 0, i.e. where m = 0 or the weight is 0 (whose gradient
        # the softmax's backward multiplies by that weight, 0, anyway)
        torch.ops.aten.threshold_backward.grad_input(d_weights, dropped, 0, grad_input=d_weights)
        d_scores = torch._softmax_backward_data(d_weights, weights, -1, weights.dtype)
        torch.baddbmm(dq, d_scores, k, beta=0.0, alpha=scale, out=dq)
        torch.baddbmm(dk, d_scores.transpose(1, 2), q, beta=0.0, alpha=scale, out=dk)
        merged = [_merge(t, b) for t in grads]
        return merged[0], (merged[1] if not fused else None), None, None, None


def packed_attention(x_q: Tensor, x_kv: Tensor | None, *, heads: int, mask: Tensor | None, p: float) -> Tensor:
    """Multi-head attention with dropout ``p`` on the weights over projected inputs, ``(B, Tq, D)`` out.

    ``x_q`` is the fused ``(B, T, 3D)`` Q|K|V projection of self-attention (``x_kv`` None), or the ``(B, Tq, D)``
    query projection with ``x_kv`` the ``(B, Tk, 2D)`` K|V projection (cross-attention). ``mask`` is an additive
    float mask, ``(Tq, Tk)`` or ``(B|1, H|1, Tq, Tk)``, whose every row leaves some key unblocked; it receives no
    gradient. The node is differentiable once (no double backward).
    """
    if not representable(p):
        raise ValueError(f"packed_attention drops weights: p must lie in (2^-17, 1 - 2^-17), got {p}")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"packed_attention: heads must be a positive int, got {heads!r}")
    if mask is not None and not mask.is_floating_point():
        raise ValueError(f"packed_attention takes an additive float mask (-inf or a large negative = blocked), "
                         f"got a {mask.dtype} mask")
    if mask is not None and mask.dim() not in (2, 4):  # a 3-D mask would broadcast its batch over the heads
        raise ValueError(f"packed_attention takes a (Tq, Tk) or (B|1, H|1, Tq, Tk) mask, got shape "
                         f"{tuple(mask.shape)}")
    parts = 3 if x_kv is None else 1
    if x_q.dim() != 3 or x_q.shape[-1] % (parts * heads):
        raise ValueError(f"x_q must be (B, T, {parts} * heads * Dh) with heads={heads}, got shape {tuple(x_q.shape)}")
    if x_kv is not None and (x_kv.dim() != 3 or x_kv.shape[0] != x_q.shape[0] or x_kv.shape[-1] != 2 * x_q.shape[-1]):
        raise ValueError(f"x_kv must be (B, Tk, 2D) = (B={x_q.shape[0]}, Tk, {2 * x_q.shape[-1]}) for x_q of shape "
                         f"{tuple(x_q.shape)}, got {tuple(x_kv.shape)}")
    return _PackedAttention.apply(x_q, x_kv, heads, mask, p)
