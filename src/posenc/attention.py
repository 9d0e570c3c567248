"""Masks, scaled dot-product attention (fused and plain math paths), and multi-head attention.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V        (Vaswani et al. 2017, eq. 1)

Masks arrive in ``torch.nn.Transformer``'s conventions (bool True = blocked, float = added, key padding True =
pad) and are converted once, here, into an :class:`AttentionMask` that every layer of a stack shares.
``torch.nn.functional.scaled_dot_product_attention``'s own bool mask means the opposite (True = attend), so the
fused path is only ever handed a float mask. Blocked logits get a large *finite* negative value and rows that
can attend to nothing are set to zero afterwards, so such rows give zeros, never NaN, forward and backward.

Legend: B batch, H heads, Tq / Tk query / key length, D model width, Dh head width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_rank
from .cache import LayerCache
from .dropout import fast_dropout
from .encodings.base import PositionalEncoding

__all__ = ["AttentionMask", "MultiHeadAttention", "build_mask", "scaled_dot_product_attention"]


def neg_large(dtype: torch.dtype) -> float:
    """The value added to blocked logits: far below any real logit, yet finite even after adding a bias."""
    return torch.finfo(dtype).min / 4


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
                base = self.added.to(dtype) if base is None else base + self.added.to(dtype)
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


def _attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: AttentionMask | None,
    bias: Tensor | None,
    *,
    dropout_p: float,
    scale: float | None,
    use_math: bool,
    want_weights: bool = False,
    fast: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attention over ``(B, H, T, Dh)`` tensors with a prepared mask and an encoding's bias.

    ``fast`` (the opt-in fast path) drops attention weights with :func:`posenc.dropout.fast_dropout`; since
    SDPA's CPU kernel cannot apply dropout itself (it falls back to its own math path), attention with
    dropout then takes the math path here.
    """
    if mask is None:
        attn_mask, is_causal = (None if bias is None else bias.to(q.dtype)), False
    else:
        attn_mask, is_causal = mask.for_sdpa(bias, q.dtype)
    weights = None
    if use_math or want_weights or (fast and dropout_p > 0):
        out, weights = _math_attention(
            q, k, v, attn_mask, is_causal, mask, dropout_p=dropout_p, scale=scale, fast=fast
        )
    else:
        if attn_mask is not None and mask is not None and mask.causal and q.shape[-2] > CAUSAL_CHUNK:
            out = _causal_chunks(q, k, v, attn_mask, dropout_p=dropout_p, scale=scale)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
            )
        if mask is not None and mask.dead_rows is not None:
            out = out.masked_fill(mask.dead_rows, 0.0)
    return out, weights


CAUSAL_CHUNK = 256  # queries per fused call when a causal mask comes as a float mask (see _causal_chunks)


def _causal_chunks(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor, *, dropout_p: float, scale: float | None) -> Tensor:
    """Causal attention with a float mask (an encoding's bias), one fused call per chunk of queries.

    Given only a float mask, the fused kernel cannot know that the keys after each query are blocked, so it
    computes them all, forward and backward; ``is_causal`` would let it skip them, but then there is no way to
    add a bias. Queries ``[a, b)`` see at most the keys up to ``b`` (bottom-right aligned), so each chunk is
    handed only those keys: with chunks of 256 the work at T = 512 is 3/4 of the full square, at T = 2048 it
    is 9/16. The result is the same function.
    """
    tq, tk = q.shape[-2], k.shape[-2]
    offset = tk - tq
    outs = []
    for a in range(0, tq, CAUSAL_CHUNK):
        b = min(tq, a + CAUSAL_CHUNK)
        end = b + offset  # (B, H, b - a, Dh) queries attend keys [0, end)
        outs.append(F.scaled_dot_product_attention(
            q[..., a:b, :], k[..., :end, :], v[..., :end, :], attn_mask=attn_mask[..., a:b, :end],
            dropout_p=dropout_p, scale=scale,
        ))
    return torch.cat(outs, dim=-2)  # (B, H, Tq, Dh)


def _math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    mask: AttentionMask | None,
    *,
    dropout_p: float,
    scale: float | None,
    fast: bool,
) -> tuple[Tensor, Tensor]:
    """The plain path: the weights softmax(Q K^T * scale + mask) are materialized ``(B, H, Tq, Tk)``.

    The fast path computes the same function with fewer passes over the (Tq, Tk) scores: in bf16/fp16 it lets
    softmax accumulate in float internally instead of converting the scores to float32 and the weights back
    (equal results forward; the backward rounds its gradient once more), adds a causal mask instead of
    ``masked_fill`` (cheaper, forward and backward), and drops weights with :func:`posenc.dropout.fast_dropout`.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q * scale, k.transpose(-2, -1))  # (B, H, Tq, Tk); scaling Q (Tq x Dh) is the cheaper
    if is_causal and fast and mask is not None:
        attn_mask = mask.causal_float(scores.dtype)  # an add (cached per stack) is cheaper than masked_fill
    if attn_mask is not None:
        scores = scores + attn_mask
    elif is_causal:
        blocked = causal_blocked(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(blocked, neg_large(scores.dtype))
    if fast and scores.dtype in (torch.bfloat16, torch.float16):
        weights = torch.softmax(scores, dim=-1)
    else:
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if mask is not None and mask.dead_rows is not None:
        weights = weights.masked_fill(mask.dead_rows, 0.0)
    if dropout_p > 0:
        dropped = fast_dropout(weights, dropout_p) if fast else F.dropout(weights, p=dropout_p)
    else:
        dropped = weights
    return torch.matmul(dropped, v), weights  # (B, H, Tq, Dh), (B, H, Tq, Tk)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    is_causal: bool = False,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    math_path: bool = False,
) -> Tensor:
    """softmax(Q K^T / sqrt(d_k) + bias + mask) V over ``(B, H, T, Dh)`` tensors.

    ``mask`` uses torch.nn's conventions (bool True = blocked, float = added), shape ``(Tq, Tk)`` or
    ``(B|1, H|1, Tq, Tk)``; ``bias`` is an encoding's additive bias ``(H, Tq, Tk)`` or ``(B, H, Tq, Tk)``.
    ``is_causal`` aligns the queries with the last keys (right for a KV cache). ``math_path=True`` takes the
    plain, readable computation instead of the fused kernel. A query with nothing to attend to gives zeros.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_rank(name, t, 4)
    batch, heads, q_len, _ = q.shape
    k_len = k.shape[-2]
    m = build_mask(
        mask, None, causal=is_causal, batch=batch, heads=heads, q_len=q_len, k_len=k_len, device=q.device
    )
    out, _ = _attend(q, k, v, m, bias, dropout_p=dropout_p, scale=scale, use_math=math_path)
    return out


class MultiHeadAttention(nn.Module):
    """Multi-head attention that calls its positional encoding's hooks.

    Self-attention projects Q, K, V with one fused matrix (the layout of ``torch.nn.MultiheadAttention``'s
    ``in_proj_weight``); cross-attention projects Q from the decoder and K, V from the memory. Positional hooks
    act on self-attention only: in cross-attention the source and target positions are different sequences,
    so there is no relative distance between them (T5 makes the same choice); absolute encodings reach
    cross-attention through the embeddings.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        cross: bool = False,
        encoding: PositionalEncoding | None = None,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.dropout, self.cross = dropout, cross
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)  # rows: W_Q | W_K | W_V
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # W_O
        self.encoding = encoding if (encoding is not None and not cross) else PositionalEncoding()
        self.use_math = False  # take the plain math path (tests, and encodings that need the weights)
        self.capture_weights = False  # keep the last attention weights in `last_weights` (pictures)
        self.fast_dropout = False  # the fast path's dropout on attention weights (posenc.fast.use_fast_path)
        self.last_weights: Tensor | None = None

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def _project(self, x: Tensor, memory: Tensor | None, cache: LayerCache | None) -> tuple[Tensor, Tensor, Tensor]:
        d = self.d_model
        if not self.cross:
            b, n, _ = x.shape
            qkv = self.in_proj(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, Dh)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh), one op instead of seven
            return q, k, v
        w, b = self.in_proj.weight, self.in_proj.bias
        q = F.linear(x, w[:d], None if b is None else b[:d])
        if cache is not None and cache.cross is not None:
            k, v = cache.cross  # computed once per source
            return self._heads(q), k, v
        if memory is None:
            raise ValueError("cross-attention needs memory (the encoder output)")
        kv = F.linear(memory, w[d:], None if b is None else b[d:])  # (B, S, 2D)
        k, v = kv.split(d, dim=-1)
        k, v = self._heads(k), self._heads(v)
        if cache is not None:
            cache.cross = (k, v)
        return self._heads(q), k, v

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        mask: AttentionMask | None = None,
        q_pos: Tensor | None = None,
        k_pos: Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        """``x`` ``(B, Tq, D)`` -> ``(B, Tq, D)``. ``q_pos`` are the queries' positions; ``k_pos`` those of
        every key (cached ones included). With a cache, new keys and values are appended to it."""
        q, k, v = self._project(x, memory, cache)
        enc = self.encoding
        if not self.cross:
            if q_pos is None:
                q_pos = torch.arange(x.shape[1], device=x.device)
            if k_pos is None:
                k_pos = q_pos
            if cache is not None and enc.rotate_after_cache:
                k, v = cache.self_kv.append(k, v)  # cache keys before rotation, rotate them all now
                q, k = enc.rotate(q, k, q_pos, k_pos)
            else:
                q, k = enc.rotate(q, k, q_pos, q_pos)  # the new keys sit at the queries' positions
                if cache is not None:
                    k, v = cache.self_kv.append(k, v)
        bias = enc.bias(q_pos, k_pos) if (not self.cross and enc.uses_bias) else None
        if not self.cross and enc.uses_content_bias:  # query-dependent bias (Shaw et al.'s relative keys)
            extra_bias = enc.content_bias(q, q_pos, k_pos)
            if extra_bias is not None:
                bias = extra_bias if bias is None else bias + extra_bias
        needs_weights = (not self.cross and enc.uses_value_term) or self.capture_weights
        p = self.dropout if self.training else 0.0
        out, weights = _attend(
            q, k, v, mask, bias, dropout_p=p, scale=None, use_math=self.use_math, want_weights=needs_weights,
            fast=self.fast_dropout,
        )
        if needs_weights and not self.cross and enc.uses_value_term:
            extra = enc.value_term(weights, q_pos, k_pos)
            if extra is not None:
                out = out + extra
        if self.capture_weights:
            self.last_weights = weights.detach()
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.d_model))  # (B, Tq, D)
