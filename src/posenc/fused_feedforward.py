"""The fast path's feed-forward block with ReLU and dropout: one autograd node that keeps a single hidden tensor.

    FFN(x) = W2 · dropout(relu(W1 x + b1)) + b2,    dropout(u) = u * m / (1 - p)      (Vaswani et al. 2017, eq. 2)

Built from separate modules, the block makes three passes over its (N, F) hidden activations after the first
product (ReLU, the mask drawn, the mask applied) and keeps three (N, F) tensors for the backward (ReLU's output,
the mask, the dropped values), whose backward makes two more passes (the mask, then ReLU's gradient). Here:

* the ReLU and the mask are applied in place in one pass, chunk by chunk as the mask's random words are drawn
  (:func:`posenc.dropout.relu_keep_`), so no mask is stored at all: ``y = relu(h) * m``;
* the scale ``1 / (1 - p)`` rides in the products (``addmm``'s ``alpha``) instead of a pass over (N, F);
* the backward needs only ``y``: ``d relu(h) m / dh`` is ``m [h > 0]``, which is ``[y > 0]`` (one masking pass).

At the base configuration's feed-forward shapes (N = 2048 tokens, D = 512, F = 2048) this saves two (N, F)
tensors per layer (32 MiB in fp32) and three passes. The mask is the one :class:`posenc.dropout.FastDropout`
draws from the same generator state, so the block computes what ``linear2(FastDropout(relu(linear1(x))))``
does, up to where the scale is applied (rounding; tested). Under autocast the products run in autocast's dtype,
as ``nn.Linear``'s would. One difference, with non-finite hidden values only: a NaN entry (or a dropped ``inf``,
which becomes ``inf * 0 = NaN`` in both) passes its gradient here, where the modules' mask stops it (the backward
zeroes the entries where ``y <= 0``, which a NaN is not); the forward values are torch's either way.

Legend: N tokens (batch x length), D model width, F feed-forward width.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .dropout import keep_scale, relu_keep_, representable

__all__ = ["relu_dropout_feedforward"]


def _product(bias: Tensor | None, a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """``bias + alpha * a @ b``; without a bias, ``alpha * a @ b`` (``addmm`` with ``beta = 0`` reads nothing)."""
    if bias is None:
        return torch.addmm(a.new_zeros(()), a, b, beta=0.0, alpha=alpha)
    return torch.addmm(bias, a, b, alpha=alpha)


class _ReLUDropoutFF(torch.autograd.Function):
    """``(x (N, D), W1 (F, D), b1, W2 (D, F), b2) -> (N, D)``; the biases may be None."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, p: float
    ) -> Tensor:
        scale = keep_scale(p)
        y = relu_keep_(_product(b1, x, w1.t(), 1.0), p)  # (N, F): relu(W1 x + b1) * m, in place
        ctx.save_for_backward(x, w1, w2, y)
        ctx.scale, ctx.biases = scale, (b1 is not None, b2 is not None)
        return _product(b2, y, w2.t(), scale)  # (N, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w1, w2, y = ctx.saved_tensors
        scale, (has_b1, has_b2) = ctx.scale, ctx.biases
        need = ctx.needs_input_grad
        dw2 = _product(None, grad.t(), y, scale) if need[3] else None  # (D, F)
        db2 = grad.sum(0) if has_b2 and need[4] else None
        dx = dw1 = db1 = None
        if any(need[:3]):
            dh = _product(None, grad, w2, scale)  # (N, F): d loss / d relu(h) m, with the scale
            torch.ops.aten.threshold_backward.grad_input(dh, y, 0, grad_input=dh)  # 0 where y <= 0: dropped or h <= 0
            dx = torch.mm(dh, w1) if need[0] else None  # (N, D)
            dw1 = torch.mm(dh.t(), x) if need[1] else None  # (F, D)
            db1 = dh.sum(0) if has_b1 and need[2] else None
        return dx, dw1, db1, dw2, db2, None


def relu_dropout_feedforward(
    x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, *, p: float
) -> Tensor:
    """``W2 · dropout(relu(W1 x + b1)) + b2`` for ``x`` ``(..., D)`` as one node (training only: dropout on).

    ``p`` must be representable by the 16-bit mask (:func:`posenc.dropout.representable`). Under autocast the
    inputs are cast to autocast's dtype first, as ``nn.Linear`` casts them. Differentiable once.
    """
    if not representable(p):
        raise ValueError(f"relu_dropout_feedforward drops: p must lie in (2^-17, 1 - 2^-17), got {p}")
    device = x.device.type
    if torch.is_autocast_enabled(device):  # autocast's rule for linear: every floating input but float64
        dtype = torch.get_autocast_dtype(device)

        def cast(t: Tensor | None) -> Tensor | None:
            return t if t is None or t.dtype == torch.float64 else t.to(dtype)

        x, w1, b1, w2, b2 = (cast(t) for t in (x, w1, b1, w2, b2))
    lead = x.shape[:-1]
    with torch.autocast(device, enabled=False):
        out = _ReLUDropoutFF.apply(x.reshape(-1, x.shape[-1]), w1, b1, w2, b2, p)  # (N, D)
    return out.view(*lead, out.shape[-1])
