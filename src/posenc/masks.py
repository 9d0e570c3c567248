"""Attention masks in one form: torch.nn's conventions converted once and shared by every layer of a stack.

Masks arrive in ``torch.nn.Transformer``'s conventions (bool True = blocked, float = added, key padding True =
pad) and become an :class:`AttentionMask`. ``torch.nn.functional.scaled_dot_product_attention``'s own bool mask
means the opposite (True = attend), so the fused path is only ever handed a float mask. Blocked logits get a
large *finite* negative value and rows that can attend to nothing are set to zero afterwards, so such rows give
zeros, never NaN, forward and backward.

Legend: B batch, H heads, Tq / Tk query / key length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import check_rank

__all__ = ["AttentionMask", "build_mask", "causal_blocked", "neg_large"]


def neg_large(dtype: torch.dtype) -> float:
    """The value added to blocked logits: far below any real logit, yet finite even after adding a bias."""
    return torch.finfo(dtype).min / 4


def _within_range(added: Tensor, dtype: torch.dtype) -> Tensor:
    """A float mask's finite part in ``dtype``, clamped to half its range first. Cast as it is, a mask built with
    ``torch.finfo(torch.float32).min`` (a common way to block a key) becomes -inf in bf16 and fp16, and a row of
    such entries NaN where float32 gives finite weights; half the range also leaves room for a blocked entry's
    :func:`neg_large` and a bias to be added without overflow."""
    limit = torch.finfo(dtype).max / 2
    return added.clamp(-limit, limit).to(dtype)


def causal_blocked(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """``(Tq, Tk)`` bool, True where key j lies after query i; the queries are the *last* Tq of the keys
    (bottom-right alignment), which is what a KV cache needs. SDPA's ``is_causal`` aligns top-left instead."""
    offset = k_len - q_len
    q_idx = torch.arange(q_len, device=device)[:, None]
    k_idx = torch.arange(k_len, device=device)[None, :]
    return k_idx > q_idx + offset


@dataclass
class AttentionMask:
    """The masks of one attention call, in one form, shared by every layer of a stack.

    ``blocked`` is a bool tensor broadcastable to ``(B, H, Tq, Tk)`` (True = may not attend) that already
    holds padding, the user's bool mask, the ``-inf`` entries of the user's float mask and, where needed, the
    causal mask; ``added`` holds the finite part of a float mask. ``causal_only`` marks a square, purely causal
    mask that SDPA's fast ``is_causal`` path can serve; ``causal`` says that the mask blocks every key after
    its query (bottom-right aligned), whatever else it blocks, so attention may skip those keys altogether.
    """

    q_len: int
    k_len: int
    blocked: Tensor | None = None
    added: Tensor | None = None
    causal_only: bool = False
    causal: bool = False
    device: torch.device | None = None
    _dead: Tensor | None = field(default=None, repr=False)
    _float: dict[torch.dtype, Tensor | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.blocked is not None:
            dead = self.blocked.all(dim=-1, keepdim=True)  # (B|1, H|1, Tq, 1)
            self._dead = dead if bool(dead.any()) else None

    @property
    def dead_rows(self) -> Tensor | None:
        """Bool ``(B|1, H|1, Tq, 1)``: queries with no key to attend to (their output is zero), or None."""
        return self._dead

    def for_sdpa(self, bias: Tensor | None, dtype: torch.dtype) -> tuple[Tensor | None, bool]:
        """The float ``attn_mask`` (or None) and the ``is_causal`` flag to hand to SDPA."""
        if self.causal_only and bias is None:
            return None, True
        base = self._base(dtype)
        if bias is None:
            return base, False
        bias = bias.to(dtype)
        if bias.dim() == 3:  # (H, Tq, Tk) -> (1, H, Tq, Tk)
            bias = bias.unsqueeze(0)
        return (bias if base is None else base + bias), False

    def rows(self, start: int, stop: int, keys: int) -> AttentionMask:
        """The mask of queries ``[start, stop)`` over the first ``keys`` keys (a chunk of a causal mask)."""

        def cut(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            q = slice(start, stop) if t.shape[-2] > 1 else slice(None)  # (.., 1, Tk) broadcasts over queries
            return t[..., q, :keys]

        blocked = self.blocked
        if self.causal_only:  # bottom-right aligned: query start + i sits at key start + i + (k_len - q_len)
            blocked = causal_blocked(self.q_len, self.k_len, self.device)[None, None]
        return AttentionMask(stop - start, keys, blocked=cut(blocked), added=cut(self.added), causal=self.causal,
                             device=self.device)

    def causal_float(self, dtype: torch.dtype) -> Tensor | None:
        """A causal-only mask as an additive float ``(Tq, Tk)`` mask of ``dtype`` (built once per dtype)."""
        return self._base(dtype)

    def _base(self, dtype: torch.dtype) -> Tensor | None:
        """The blocked entries as a float mask of ``dtype`` plus the finite float mask; built once per dtype."""
        if dtype not in self._float:
            blocked = self.blocked
            if self.causal_only:
                blocked = causal_blocked(self.q_len, self.k_len, self.device)
            base = None
            if blocked is not None:
                base = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device)
                base.masked_fill_(blocked, neg_large(dtype))
            if self.added is not None:
                added = _within_range(self.added, dtype)
                base = added if base is None else base + added
            self._float[dtype] = base
        return self._float[dtype]


def _as_4d(mask: Tensor, batch: int, heads: int, q_len: int, k_len: int, name: str) -> Tensor:
    """A user mask of shape (Tq, Tk), (B*H, Tq, Tk) or (B|1, H|1, Tq, Tk) -> 4-D."""
    check_rank(name, mask, (2, 3, 4))
    if mask.shape[-2:] != (q_len, k_len):
        raise ValueError(f"{name} must end in ({q_len}, {k_len}) (queries, keys), got shape {tuple(mask.shape)}")
    if mask.dim() == 2:
        return mask[None, None]
    if mask.dim() == 3:
        if mask.shape[0] != batch * heads:
            raise ValueError(
                f"a 3-D {name} must have batch*heads = {batch}*{heads} = {batch * heads} rows, "
                f"got shape {tuple(mask.shape)}"
            )
        return mask.view(batch, heads, q_len, k_len)
    if mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, heads):
        raise ValueError(f"a 4-D {name} must be (B|1, H|1, Tq, Tk) = ({batch}|1, {heads}|1, ...), got {tuple(mask.shape)}")
    return mask


def _split_float(mask: Tensor) -> tuple[Tensor, Tensor]:
    """A float mask -> (bool blocked where -inf, finite additive part)."""
    blocked = torch.isneginf(mask)
    return blocked, mask.masked_fill(blocked, 0.0)


def build_mask(
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    *,
    causal: bool = False,
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    device: torch.device | None = None,
) -> AttentionMask | None:
    """Convert torch.nn-convention masks once. Returns None when nothing is masked at all."""
    blocked: Tensor | None = None
    added: Tensor | None = None

    def merge_blocked(b: Tensor) -> None:
        nonlocal blocked
        blocked = b if blocked is None else blocked | b

    def merge_added(a: Tensor) -> None:
        nonlocal added
        added = a if added is None else added + a

    if attn_mask is not None:
        m = _as_4d(attn_mask, batch, heads, q_len, k_len, "attn_mask")
        if m.dtype == torch.bool:
            merge_blocked(m)
        elif m.dtype.is_floating_point:
            b, a = _split_float(m)
            merge_blocked(b)
            merge_added(a)
        else:
            raise TypeError(f"attn_mask must be bool (True = blocked) or float (added), got dtype {m.dtype}")
    if key_padding_mask is not None:
        check_rank("key_padding_mask", key_padding_mask, 2)
        if tuple(key_padding_mask.shape) != (batch, k_len):
            raise ValueError(f"key_padding_mask must be (batch, keys) = ({batch}, {k_len}), got {tuple(key_padding_mask.shape)}")
        kpm = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
        if kpm.dtype == torch.bool:
            merge_blocked(kpm)
        elif kpm.dtype.is_floating_point:
            b, a = _split_float(kpm)
            merge_blocked(b)
            merge_added(a)
        else:
            raise TypeError(f"key_padding_mask must be bool (True = pad) or float, got dtype {kpm.dtype}")
    causal = causal and q_len > 1  # a single query at the end of the keys may see them all
    if causal and blocked is None and added is None and q_len == k_len:
        return AttentionMask(q_len, k_len, causal_only=True, causal=True, device=device)
    if causal:
        merge_blocked(causal_blocked(q_len, k_len, device)[None, None])
    if blocked is None and added is None:
        return None
    return AttentionMask(q_len, k_len, blocked=blocked, added=added, causal=causal)
