"""Scaled dot-product attention (fused and plain math paths) and multi-head attention.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V        (Vaswani et al. 2017, eq. 1)

Masks come prepared as an :class:`posenc.masks.AttentionMask` (torch.nn's conventions converted once per stack;
re-exported here). Rows that can attend to nothing give zeros, never NaN, forward and backward.

Legend: B batch, H heads, Tq / Tk query / key length, D model width, Dh head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_positive_int, check_rank
from .cache import LayerCache
from .dropout import fast_dropout, representable
from .encodings.base import PositionalEncoding
from .masks import AttentionMask, build_mask, causal_blocked, neg_large
from .packed_attention import packed_attention

__all__ = ["AttentionMask", "MultiHeadAttention", "build_mask", "causal_blocked", "scaled_dot_product_attention"]


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
MATH_CHUNK = 128  # queries per chunk on the math path (encodings that need the weights): smaller chunks skip more


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
        scores = scores.add_(attn_mask)  # in place: the product's output is not saved for its backward
    elif is_causal:
        blocked = causal_blocked(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(blocked, neg_large(scores.dtype))
    if fast or scores.dtype not in (torch.bfloat16, torch.float16):  # fp64 stays fp64
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
        check_positive_int("num_heads", num_heads)  # before the divisibility test, which would divide by it
        check_positive_int("d_model", d_model)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must lie in [0, 1], got {dropout}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.dropout, self.cross = dropout, cross
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)  # rows: W_Q | W_K | W_V
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # W_O
        self.encoding = encoding if (encoding is not None and not cross) else PositionalEncoding()
        self.use_math = False  # take the plain math path (tests, and encodings that need the weights)
        self.capture_weights = False  # keep the last attention weights in `last_weights` (pictures)
        self.fast_dropout = False  # the fast path's dropout on attention weights (posenc.fast.use_fast_path)
        self.last_weights: Tensor | None = None

    def _rows(self, t: Tensor, start: int, stop: int) -> Tensor:
        """``t`` projected by rows ``[start, stop)`` of the fused in-projection (cross-attention's Q, or K|V)."""
        w, b = self.in_proj.weight, self.in_proj.bias
        return F.linear(t, w[start:stop], None if b is None else b[start:stop])

    @staticmethod
    def _memory(memory: Tensor | None) -> Tensor:
        if memory is None:
            raise ValueError("cross-attention needs memory (the encoder output)")
        return memory

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
        q = self._rows(x, 0, d)
        if cache is not None and cache.cross is not None:
            k, v = cache.cross  # computed once per source
            return self._heads(q), k, v
        kv = self._rows(self._memory(memory), d, 3 * d)  # (B, S, 2D)
        k, v = kv.split(d, dim=-1)
        k, v = self._heads(k), self._heads(v)
        if cache is not None:
            cache.cross = (k, v)
        return self._heads(q), k, v

    def _attend_positions(
        self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, q_pos: Tensor | None,
        k_pos: Tensor | None, p: float,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention with the encoding's bias, content bias and value term (self-attention only)."""
        enc = self.encoding
        bias = enc.bias(q_pos, k_pos) if (not self.cross and enc.uses_bias) else None
        if not self.cross and enc.uses_content_bias:  # query-dependent bias (Shaw et al.'s relative keys)
            extra_bias = enc.content_bias(q, q_pos, k_pos)
            if extra_bias is not None:
                bias = extra_bias if bias is None else bias + extra_bias
        value_term = not self.cross and enc.uses_value_term
        out, weights = _attend(
            q, k, v, mask, bias, dropout_p=p, scale=None, use_math=self.use_math,
            want_weights=value_term or self.capture_weights, fast=self.fast_dropout,
        )
        if value_term:
            extra = enc.value_term(weights, q_pos, k_pos)
            if extra is not None:
                out = out + extra
        return out, weights  # (B, H, Tq, Dh), (B, H, Tq, Tk) or None

    def _packs(self, x: Tensor, memory: Tensor | None, mask: AttentionMask | None, cache: LayerCache | None,
               p: float) -> bool:
        """Whether this call takes :func:`posenc.packed_attention.packed_attention` (the fast path's attention
        with dropout): no cache, nothing asked of the weights, no encoding hook inside attention, no dead rows,
        no mask that wants a gradient, a memory of the queries' batch (not one broadcast over it)."""
        enc = self.encoding
        hooks = (enc.uses_rotate or enc.uses_bias or enc.uses_content_bias or enc.uses_value_term
                 or enc.uses_causal_attention)
        mask_ok = mask is None or (mask.dead_rows is None and (mask.added is None or not mask.added.requires_grad))
        memory_ok = not self.cross or (memory is not None and memory.shape[0] == x.shape[0])
        return (self.fast_dropout and representable(p) and cache is None and not hooks and x.numel() > 0  # p > 0
                and not self.use_math and not self.capture_weights and mask_ok and memory_ok)

    def _packed(self, x: Tensor, memory: Tensor | None, mask: AttentionMask | None, p: float) -> Tensor:
        """Projections, then attention with dropout in one packed node: ``(B, Tq, D)``, before ``out_proj``."""
        if self.cross:
            d = self.d_model
            x_q, x_kv = self._rows(x, 0, d), self._rows(self._memory(memory), d, 3 * d)  # (B,Tq,D), (B,Tk,2D)
        else:
            x_q, x_kv = self.in_proj(x), None  # (B, T, 3D)
        float_mask = None
        if mask is not None:
            float_mask, causal = mask.for_sdpa(None, x_q.dtype)
            if causal:
                float_mask = mask.causal_float(x_q.dtype)  # (Tq, Tk), added by the scores' product itself
        return packed_attention(x_q, x_kv, heads=self.num_heads, mask=float_mask, p=p)

    def _encoding_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, q_pos: Tensor | None,
        k_pos: Tensor | None, p: float,
    ) -> Tensor | None:
        """The encoding's own causal attention, when it has one and the call is plainly causal, without dropout."""
        enc = self.encoding
        if (self.cross or not enc.uses_causal_attention or self.use_math or self.capture_weights or p > 0
                or mask is None or not mask.causal_only or q_pos is None or k_pos is None):
            return None
        return enc.causal_attention(q, k, v, q_pos, k_pos)

    def _attend_in_chunks(
        self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, q_pos: Tensor, k_pos: Tensor, p: float
    ) -> Tensor:
        """Causal attention whose encoding needs the weights (the math path), by chunks of queries, each over
        only the keys it can see: 5/8 of the work at T = 512 (see :func:`_causal_chunks`). Same result."""
        tq = q.shape[-2]
        offset, outs = k.shape[-2] - tq, []
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # once, rather than a copy per chunk in matmul
        for a in range(0, tq, MATH_CHUNK):
            b = min(tq, a + MATH_CHUNK)
            end = b + offset
            out, _ = self._attend_positions(q[..., a:b, :], k[..., :end, :], v[..., :end, :], mask.rows(a, b, end),
                                            q_pos[..., a:b], k_pos[..., :end], p)
            outs.append(out)
        return torch.cat(outs, dim=-2)  # (B, H, Tq, Dh)

    @staticmethod
    def _self_positions(
        x: Tensor, q_pos: Tensor | None, k_pos: Tensor | None, cache: LayerCache | None
    ) -> tuple[Tensor, Tensor]:
        """Self-attention's query and key positions, checked against the query and key counts.

        By default the queries follow the cached keys, ``arange(L, L + Tq)``, and the keys are all of them,
        ``arange(L + Tq)``, so that decoding token by token over a cache without positions equals the causal call
        over the whole sequence (positions from 0 at every step would place each token at position 0). With
        ``q_pos`` alone the cached keys are taken at ``0 .. L - 1`` (where decoding without positions put them),
        followed by the queries' positions; keys cached at other positions need their ``k_pos``.
        """
        tq, cached = x.shape[1], (0 if cache is None else cache.self_kv.length)
        if q_pos is None:
            q_pos = torch.arange(cached, cached + tq, device=x.device)
        if k_pos is None and cached == 0:
            k_pos = q_pos
        elif k_pos is None:  # 0 .. L-1, then the queries' positions: arange(L + Tq) by default
            past = torch.arange(cached, device=q_pos.device, dtype=q_pos.dtype)
            k_pos = torch.cat([past.expand(*q_pos.shape[:-1], cached), q_pos], dim=-1)  # (T,) or (B, T)
        if q_pos.shape[-1] != tq:
            raise ValueError(f"q_pos holds {q_pos.shape[-1]} positions (shape {tuple(q_pos.shape)}) but the query "
                             f"length is {tq}")
        if k_pos.shape[-1] != cached + tq:
            raise ValueError(f"k_pos holds {k_pos.shape[-1]} positions (shape {tuple(k_pos.shape)}) but there are "
                             f"{cached + tq} keys ({cached} cached + {tq} new)")
        return q_pos, k_pos

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
        every key (cached ones included); by default they continue from the cache (see ``_self_positions``).
        With a cache, new keys and values are appended to it."""
        p = self.dropout if self.training else 0.0
        if self._packs(x, memory, mask, cache, p):
            if not self.cross and (q_pos is not None or k_pos is not None):  # unused here, but checked as elsewhere
                self._self_positions(x, q_pos, k_pos, cache)
            return self.out_proj(self._packed(x, memory, mask, p))
        q, k, v = self._project(x, memory, cache)
        enc = self.encoding
        if not self.cross:
            q_pos, k_pos = self._self_positions(x, q_pos, k_pos, cache)
            if cache is not None and enc.rotate_after_cache:
                k, v = cache.self_kv.append(k, v)  # cache keys before rotation, rotate them all now
                q, k = enc.rotate(q, k, q_pos, k_pos)
            else:
                q, k = enc.rotate(q, k, q_pos, q_pos)  # the new keys sit at the queries' positions
                if cache is not None:
                    k, v = cache.self_kv.append(k, v)
        tq = q.shape[-2]
        out = self._encoding_attention(q, k, v, mask, q_pos, k_pos, p)
        if out is not None:
            weights = None
        elif (not self.cross and enc.uses_value_term and not self.capture_weights and mask is not None and mask.causal
                and tq > MATH_CHUNK):
            out, weights = self._attend_in_chunks(q, k, v, mask, q_pos, k_pos, p), None
        else:
            out, weights = self._attend_positions(q, k, v, mask, q_pos, k_pos, p)
        if self.capture_weights:
            self.last_weights = weights.detach()
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.d_model))  # (B, Tq, D)
