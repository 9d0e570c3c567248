"""Learned absolute position embeddings (Gehring et al. 2017; Vaswani et al. 2017 Table 3 row E; GPT-2, BERT).

A trainable table of ``max_len`` rows added to the token embeddings. It cannot represent a position it has no
row for: asking for one is a ``ValueError`` naming the position and the table size, never a silent clamp.
``padding_offset`` shifts every position by a constant, as fairseq does (its positions start at
``padding_idx + 1``); the table then holds ``max_len + padding_offset`` rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_init_std, check_positions, check_positive_int
from .base import PositionalEncoding, register

__all__ = ["Learned"]


@register("learned")
class Learned(PositionalEncoding):
    """A ``(max_len, d_model)`` table of trainable position vectors."""

    def __init__(
        self, *, d_model: int, max_len: int = 1024, padding_offset: int = 0, init_std: float = 0.02
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("max_len", max_len)
        if isinstance(padding_offset, bool) or not isinstance(padding_offset, int) or padding_offset < 0:
            raise ValueError(f"padding_offset must be an int >= 0, got {padding_offset!r}")
        check_init_std(init_std)
        self.max_len, self.padding_offset = max_len, padding_offset
        self.weight = nn.Parameter(torch.randn(max_len + padding_offset, d_model) * init_std)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        check_positions(positions)
        if positions.numel():
            top = int(positions.max())
            if top >= self.max_len:
                raise ValueError(
                    f"position {top} is past the learned table of max_len={self.max_len} rows "
                    f"(sequence of length {top + 1} > {self.max_len}); use a relative encoding or a larger max_len"
                )
        return x + self.weight[positions + self.padding_offset].to(x.dtype)  # (B, T, D)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.weight.shape[1]}, padding_offset={self.padding_offset}"
