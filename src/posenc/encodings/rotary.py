"""Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", section 3.2.2, eq. 15), with its scalings.

Pair i of every query and key head is rotated by ``m * theta_i`` (m the token's position), so that
``<R_m q, R_n k>`` depends on ``n - m`` only (eq. 16): relative position from an absolute operation, with no
table to learn and no bias to add. Options:

* ``fraction`` -- partial rotary (GPT-NeoX, GPT-J): only the first ``fraction * head_dim`` dims are rotated;
* ``layout`` -- which dims form a pair: ``interleaved`` (2i, 2i+1) as in the paper and Meta's Llama code, or
  ``half`` (i, i + d/2) as in GPT-NeoX and Hugging Face (``rotate_half``). The two compute the same attention
  up to a fixed permutation of the q/k projection rows: :func:`convert_rope_layout` converts weights;
* ``scaling`` with ``factor`` and ``original_max_len`` (the trained context L): see :mod:`.rope_scaling`.

The cos/sin tables are non-persistent float32 buffers computed in float64 and grown on demand, so there is no
length limit and checkpoints do not carry them.

**Dynamic NTK and the KV cache.** With ``scaling=dynamic`` the rotation depends on the current length
``l = max(key position) + 1``, so a key's rotation changes as the sequence grows. With per-sequence positions
``(B, T)`` each sequence uses its own length (its largest key position), so a sequence in a padded batch is rotated
as it would be alone (Hugging Face's implementation takes one length, the batch's largest). The encoding sets
``rotate_after_cache``: attention then caches keys *before* rotation and re-rotates the whole cache at each step
(Peng et al. 2023, section 3.3). Every attention of a cached step then uses the step's own length: in a one-layer
model the step equals an uncached forward of the prefix that ends at that token (not a forward over the finished
sequence, which uses its final length throughout). In deeper models the lower layers' states of earlier tokens
are those computed when those tokens were decoded -- what any KV cache keeps -- so past the trained length the
step differs slightly from a fresh forward of its prefix; within it the two are the same.

Legend: B batch, H heads, T length, Dh head width, R rotary width (``fraction * Dh``, even).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_base, check_choice, check_positions, check_positive_int
from ._relative import as_range
from .base import PositionalEncoding, made_for_inference_only, register
from .rope_scaling import SCALINGS, inverse_frequencies

__all__ = ["RoPE", "apply_rotary", "convert_rope_layout", "rope_layout_permutation", "rotary_width"]

LAYOUTS = ("interleaved", "half")
_DYNAMIC_TABLES_KEPT = 16

# The options each scaling reads beyond ``base`` and ``original_max_len`` (the trained context L, which describes the
# model whatever the scaling); another given a value other than its default would have no effect.
_DEFAULTS = {"factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
_READS = {"none": (), "linear": ("factor",), "ntk": ("factor",), "dynamic": ("factor",),
          "yarn": ("factor", "beta_fast", "beta_slow"), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}


def _check_unused_options(scaling: str, **options: float) -> None:
    """A ValueError for options set that ``scaling`` ignores (``rope:factor=8`` alone would be plain RoPE)."""
    unused = [f"{k}={v}" for k, v in options.items() if k not in _READS[scaling] and v != _DEFAULTS[k]]
    if unused:
        users = [name for name, reads in _READS.items() if any(u.split("=")[0] in reads for u in unused)]
        raise ValueError(f"{', '.join(unused)} has no effect with scaling={scaling!r}; it is read by scaling "
                         f"{' / '.join(users)}")


def rotary_width(head_dim: int, fraction: float) -> int:
    """The rotated width: ``int(fraction * head_dim)`` rounded down to even (as Hugging Face's ``dim``)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    width = int(head_dim * fraction) // 2 * 2
    if width < 2:
        raise ValueError(f"fraction={fraction} of head_dim={head_dim} leaves fewer than 2 dims to rotate")
    return width


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, *, layout: str) -> Tensor:
    """Rotate the first ``R = 2 * cos.shape[-1]`` dims of ``x`` ``(..., T, Dh)``; the rest pass through.

    ``cos``/``sin`` ``(..., T, R/2)`` broadcast against ``x``. Pair (a, b) becomes (a cos - b sin, a sin + b cos).
    """
    r = 2 * cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    if layout == "half":
        a, b = rot[..., : r // 2], rot[..., r // 2 :]
        out = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return out if rest.shape[-1] == 0 else torch.cat([out, rest], dim=-1)


def rope_layout_permutation(head_dim: int, rot_dim: int, src: str, dst: str) -> Tensor:
    """Index ``p`` with ``x_dst = x_src[p]`` for one head: moves each rotary pair from ``src``'s to ``dst``'s slots."""
    check_choice("src", src, LAYOUTS)
    check_choice("dst", dst, LAYOUTS)
    half = rot_dim // 2
    # Slot of pair i's first / second member in each layout.
    first = {"interleaved": torch.arange(half) * 2, "half": torch.arange(half)}
    second = {"interleaved": torch.arange(half) * 2 + 1, "half": torch.arange(half) + half}
    perm = torch.arange(head_dim)
    perm[first[dst]] = first[src]
    perm[second[dst]] = second[src]
    return perm


def convert_rope_layout(
    weight: Tensor, *, num_heads: int, head_dim: int, src: str, dst: str, fraction: float = 1.0
) -> Tensor:
    """Convert a query or key projection (weight ``(H*Dh, D_in)`` or bias ``(H*Dh,)``) between pair layouts.

    A model trained with RoPE in layout ``src`` and run with layout ``dst`` on the converted W_Q and W_K gives the
    same attention: q and k are permuted alike, so every dot product is unchanged. (Meta's Llama checkpoints use
    ``interleaved``; Hugging Face's converted ones ``half``.) W_V and W_O stay as they are.
    """
    if weight.shape[0] != num_heads * head_dim:
        raise ValueError(f"weight has {weight.shape[0]} rows, expected num_heads*head_dim = {num_heads * head_dim}")
    perm = rope_layout_permutation(head_dim, rotary_width(head_dim, fraction), src, dst).to(weight.device)
    rows = (torch.arange(num_heads, device=weight.device)[:, None] * head_dim + perm).reshape(-1)
    return weight[rows].clone()


@register("rope")
class RoPE(PositionalEncoding):
    """Rotary position embedding with partial rotary, two pair layouts and the context-extension scalings."""

    rebuilt_buffers = ("cos_table", "sin_table")

    def __init__(
        self,
        *,
        head_dim: int,
        base: float = 10000.0,
        fraction: float = 1.0,
        layout: Literal["interleaved", "half"] = "interleaved",
        scaling: Literal["none", "linear", "ntk", "dynamic", "yarn", "llama3"] = "none",
        factor: float = 1.0,
        original_max_len: int = 2048,
        beta_fast: float = 32.0,
        beta_slow: float = 1.0,
        low_freq_factor: float = 1.0,
        high_freq_factor: float = 4.0,
    ) -> None:
        super().__init__()
        check_positive_int("head_dim", head_dim)
        check_positive_int("original_max_len", original_max_len)
        self.layout = check_choice("layout", layout, LAYOUTS)
        self.scaling = check_choice("scaling", scaling, SCALINGS)
        check_base(base)
        if not (math.isfinite(factor) and factor >= 1):
            raise ValueError(f"factor must be a finite number >= 1 (the context is extended by it), got {factor}")
        _check_unused_options(scaling, factor=factor, beta_fast=beta_fast, beta_slow=beta_slow,
                              low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor)
        if scaling == "llama3" and not math.inf > high_freq_factor > low_freq_factor > 0:
            raise ValueError(f"llama3 needs finite high_freq_factor > low_freq_factor > 0, got {high_freq_factor}, "
                             f"{low_freq_factor}")
        if scaling == "yarn" and not math.inf > beta_fast > beta_slow > 0:
            raise ValueError(f"yarn needs finite beta_fast > beta_slow > 0, got {beta_fast}, {beta_slow}")
        self.head_dim, self.rot_dim = head_dim, rotary_width(head_dim, fraction)
        if scaling in ("ntk", "dynamic") and self.rot_dim == 2:
            raise ValueError(f"{scaling} scales the base by s^(R/(R-2)), undefined for a rotary width R of 2 "
                             f"(head_dim={head_dim}, fraction={fraction}); rotate more dims or use another scaling")
        self.base, self.factor, self.original_max_len = float(base), float(factor), original_max_len
        self._freq_options = dict(
            base=self.base, scaling=scaling, factor=self.factor, original_max_len=original_max_len,
            beta_fast=beta_fast, beta_slow=beta_slow, low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor,
        )
        self.dynamic = scaling == "dynamic" and self.factor != 1.0
        # The rotation of a dynamic scaling depends on the current length: keys are cached before rotation.
        self.rotate_after_cache = self.dynamic
        inv, self.mscale = inverse_frequencies(self.rot_dim, **self._freq_options)
        # float64 (R/2,), a plain attribute on the CPU so that model.to(dtype) cannot round it.
        self.inv_freq = inv
        self.register_buffer("cos_table", torch.empty(0, self.rot_dim // 2), persistent=False)
        self.register_buffer("sin_table", torch.empty(0, self.rot_dim // 2), persistent=False)
        # (length, device, inference mode) -> tables: plain attributes, so a dtype conversion cannot round them.
        self._dynamic_tables: dict[tuple[int, torch.device, bool], tuple[Tensor, Tensor]] = {}

    # -- tables --------------------------------------------------------------------------------------------
    @staticmethod
    def _tables(inv_freq: Tensor, length: int, mscale: float, device: torch.device) -> tuple[Tensor, Tensor]:
        angle = torch.arange(length, dtype=torch.float64, device=inv_freq.device)[:, None] * inv_freq  # (N, R/2)
        cos, sin = torch.cos(angle), torch.sin(angle)
        if mscale != 1.0:
            cos, sin = cos * mscale, sin * mscale
        return cos.to(device=device, dtype=torch.float32), sin.to(device=device, dtype=torch.float32)

    def _static(self, needed: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The plain tables, grown to ``needed`` rows; rebuilt on another device or dtype, or when built under
        inference_mode and now used outside it (slices of them would be saved for backward)."""
        table = self.cos_table
        stale = table.device != device or table.dtype != torch.float32 or made_for_inference_only(table)
        if table.shape[0] < needed or stale:
            size = max(needed, 2 * table.shape[0], 256)
            self.cos_table, self.sin_table = self._tables(self.inv_freq, size, self.mscale, device)
        return self.cos_table, self.sin_table

    def _current(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The tables for a forward whose keys reach position ``length - 1``."""
        if not self.dynamic or length <= self.original_max_len:
            return self._static(length, device)
        key = (length, device, torch.is_inference_mode_enabled())  # inference tensors serve inference only
        if key not in self._dynamic_tables:
            if len(self._dynamic_tables) >= _DYNAMIC_TABLES_KEPT:  # a padded batch has a few lengths at a time
                self._dynamic_tables.pop(next(iter(self._dynamic_tables)))
            inv, _ = inverse_frequencies(self.rot_dim, **self._freq_options, length=length)
            self._dynamic_tables[key] = self._tables(inv, length, self.mscale, device)
        return self._dynamic_tables[key]

    def _dynamic_rows(self, positions: Tensor, lengths: list[int]) -> tuple[Tensor, Tensor]:
        """cos and sin ``(B, T, R/2)`` at ``positions`` ``(B, T)``, each row with the tables of its own length."""
        cos = torch.empty(*positions.shape, self.rot_dim // 2, device=positions.device)
        sin = torch.empty_like(cos)
        for length in sorted(set(lengths)):
            rows = torch.tensor([i for i, n in enumerate(lengths) if n == length], device=positions.device)
            table_cos, table_sin = self._current(length, positions.device)
            cos[rows], sin[rows] = table_cos[positions[rows]], table_sin[positions[rows]]
        return cos, sin

    def cos_sin(self, positions: Tensor, length: int | None = None) -> tuple[Tensor, Tensor]:
        """float32 cos and sin ``(T, R/2)`` or ``(B, T, R/2)`` at integer ``positions``.

        ``length`` is the current length for ``dynamic`` (default ``max(positions) + 1``).
        """
        check_positions(positions)
        top = int(positions.max()) + 1 if positions.numel() else 0
        cos, sin = self._current(max(top, length or 0), positions.device)
        span = as_range(positions)
        if span is not None:  # a plain range: a view of the table, no gather
            return cos[span[0] : span[0] + span[1]], sin[span[0] : span[0] + span[1]]
        return cos[positions], sin[positions]

    # -- the hook --------------------------------------------------------------------------------------------
    def _rotate_with(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if cos.dim() == 3:  # (B, T, R/2) -> (B, 1, T, R/2), broadcast over heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return apply_rotary(x, cos.to(x.dtype), sin.to(x.dtype), layout=self.layout)

    def _rotate_one(self, x: Tensor, pos: Tensor, length: int) -> Tensor:
        return self._rotate_with(x, *self.cos_sin(pos, length))

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        for name, x, pos in (("q", q, q_pos), ("k", k, k_pos)):
            if pos.shape[-1] != x.shape[-2]:  # (B, H, T, Dh) against (T,) or (B, T)
                raise ValueError(f"{name}_pos holds {pos.shape[-1]} positions (shape {tuple(pos.shape)}) for "
                                 f"{x.shape[-2]} {name} rows (shape {tuple(x.shape)})")
        if self.dynamic and k_pos.dim() == 2 and k_pos.numel() and q_pos.numel():
            return self._rotate_rows(q, k, q_pos, k_pos)
        length = int(k_pos.max()) + 1 if k_pos.numel() else 0
        return self._rotate_one(q, q_pos, length), self._rotate_one(k, k_pos, length)  # (B, H, T, Dh)

    def _rotate_rows(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Dynamic scaling with per-sequence positions: each row's length is its own largest position + 1."""
        check_positions(q_pos)
        check_positions(k_pos)
        q_pos = q_pos.expand(k_pos.shape[0], -1) if q_pos.dim() == 1 else q_pos
        lengths = (torch.maximum(q_pos.amax(-1), k_pos.amax(-1)) + 1).tolist()  # (B,)
        q = self._rotate_with(q, *self._dynamic_rows(q_pos, lengths))  # (B, H, T, Dh)
        return q, self._rotate_with(k, *self._dynamic_rows(k_pos, lengths))

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rot_dim={self.rot_dim}, base={self.base}, layout={self.layout!r}, "
            f"scaling={self.scaling!r}, factor={self.factor}, original_max_len={self.original_max_len}"
        )
