"""Sinusoidal absolute encoding (Vaswani et al. 2017, section 3.5).

    PE(pos, 2i)   = sin(pos / 10000^(2i/d))
    PE(pos, 2i+1) = cos(pos / 10000^(2i/d))

Two published layouts of the same numbers: ``interleaved`` (the paper: sin at even, cos at odd columns) and
``concat`` (fairseq and tensor2tensor: all sines, then all cosines). Two published frequency ladders:
``paper`` (exponent 2i/d) and ``tensor2tensor`` (log(10000)/(n-1) steps between n timescales). The encoding is
either added to the token embeddings (the paper) or concatenated to them (``combine="concat"``, then the
token embeddings are ``d_model - dim`` wide). With an odd width the extra column is a sine and the ladder has
ceil(d/2) frequencies; fairseq and tensor2tensor instead use d//2 of them and pad a zero column, so the two
conventions agree for even widths only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_base, check_choice, check_positions, check_positive_int
from .base import PositionalEncoding, register

__all__ = ["Sinusoidal", "sinusoidal_table"]


LAYOUTS, FREQUENCIES = ("interleaved", "concat"), ("paper", "tensor2tensor")


def sinusoidal_table(
    length: int,
    dim: int,
    *,
    layout: str = "interleaved",
    frequencies: str = "paper",
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The ``(length, dim)`` table, computed in float64 so that far positions keep their precision."""
    check_choice("layout", layout, LAYOUTS)
    check_choice("frequencies", frequencies, FREQUENCIES)
    check_base(base)
    n_sin, n_cos = (dim + 1) // 2, dim // 2
    i = torch.arange(n_sin, dtype=torch.float64)
    if frequencies == "paper":
        inv_freq = base ** (-2.0 * i / dim)  # 1 / 10000^(2i/d)
    else:  # tensor2tensor: n timescales evenly spaced in log space from 1 to base
        step = math.log(base) / max(n_sin - 1, 1)
        inv_freq = torch.exp(-step * i)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq  # (T, n_sin)
    sin, cos = torch.sin(angle), torch.cos(angle[:, :n_cos])
    if layout == "concat":
        table = torch.cat([sin, cos], dim=-1)
    else:
        table = torch.empty(length, dim, dtype=torch.float64)
        table[:, 0::2] = sin
        table[:, 1::2] = cos
    return table.to(dtype)


@register("sinusoidal")
class Sinusoidal(PositionalEncoding):
    """Fixed sine/cosine absolute positions, added or concatenated to the token embeddings.

    The table is a non-persistent buffer that grows on demand, so there is no length limit and checkpoints
    do not carry it.
    """

    rebuilt_buffers = ("table",)

    def __init__(
        self,
        *,
        d_model: int,
        layout: Literal["interleaved", "concat"] = "interleaved",
        frequencies: Literal["paper", "tensor2tensor"] = "paper",
        combine: Literal["add", "concat"] = "add",
        dim: int | None = None,
        scale_input: bool = False,
        base: float = 10000.0,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        self.layout = check_choice("layout", layout, LAYOUTS)
        self.frequencies = check_choice("frequencies", frequencies, FREQUENCIES)
        self.combine = check_choice("combine", combine, ("add", "concat"))
        if combine == "add":
            if dim is not None and dim != d_model:
                raise ValueError(f"combine='add' needs dim == d_model ({d_model}), got dim={dim}")
            dim = d_model
        else:
            dim = d_model // 2 if dim is None else dim
            if not 0 < dim < d_model:
                raise ValueError(f"combine='concat' needs 0 < dim < d_model ({d_model}), got dim={dim}")
        check_base(base)
        self.d_model, self.dim, self.base = d_model, int(dim), float(base)
        self.scale = math.sqrt(d_model) if scale_input else 1.0
        self.register_buffer("table", torch.empty(0, self.dim), persistent=False)

    def _grow(self, needed: int, device: torch.device) -> Tensor:
        """The table, grown to ``needed`` rows; rebuilt in float32 on another device or dtype (a float16 table
        would round every encoding). A conversion such as ``.half().float()`` empties it (``rebuilt_buffers``)."""
        if self.table.shape[0] < needed or self.table.device != device or self.table.dtype != torch.float32:
            size = max(needed, 2 * self.table.shape[0], 256)
            self.table = sinusoidal_table(
                size, self.dim, layout=self.layout, frequencies=self.frequencies, base=self.base
            ).to(device)
        return self.table

    def encode(self, positions: Tensor) -> Tensor:
        """``(T,)`` or ``(B, T)`` integer positions -> ``(..., T, dim)`` encodings (float32)."""
        check_positions(positions)
        needed = int(positions.max()) + 1 if positions.numel() else 0
        return self._grow(needed, positions.device)[positions]

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        pe = self.encode(positions).to(x.dtype)
        if self.scale != 1.0:
            x = x * self.scale
        if self.combine == "add":
            return x + pe  # (B, T, D)
        return torch.cat([x, pe.expand(*x.shape[:-1], self.dim)], dim=-1)  # (B, T, D_in + dim)

    def input_width(self, d_model: int) -> int:
        return d_model if self.combine == "add" else d_model - self.dim

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, layout={self.layout!r}, frequencies={self.frequencies!r}, "
            f"combine={self.combine!r}, dim={self.dim}"
        )
