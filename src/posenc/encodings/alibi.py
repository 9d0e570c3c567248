"""ALiBi: attention with linear biases (Press, Smith & Lewis, ICLR 2022, section 3).

No position is added to the embeddings; each head h adds ``-m_h * (i - j)`` to the logit of query i and key j.
The slopes are fixed, a geometric sequence: for n heads (a power of two) start = ratio = 2^(-8/n), so n = 8
gives 1/2, 1/4, ..., 1/256. For other n, take the slopes of the power of two c = 2^floor(log2 n) and append
every other slope of the 2c-head sequence until there are n (the paper's rule, fairseq's code). The paper found
learned slopes no better at extrapolating and slower, so they are buffers here.

``causal=True`` uses the paper's ``-m (i - j)`` (keys after the query are masked anyway). For bidirectional
attention the symmetric ``-m |i - j|`` is used, a common choice for encoders (the paper treats decoders only).

The bias needs no parameters, so for plain-range positions it is built once per shape and reused by every
layer and forward; it reaches the fused SDPA kernel as a float mask.

Legend: H heads, Tq / Tk query / key length, B batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_positive_int
from ._relative import RangeCache, relative_distance
from .base import PositionalEncoding, kept_dtype, register

__all__ = ["ALiBi", "alibi_slopes"]


def _power_of_two_slopes(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]


def alibi_slopes(num_heads: int) -> Tensor:
    """The ``(num_heads,)`` float64 slopes m_h of the paper's rule."""
    check_positive_int("num_heads", num_heads)
    c = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = _power_of_two_slopes(c)
    if c < num_heads:
        slopes += _power_of_two_slopes(2 * c)[0::2][: num_heads - c]
    return torch.tensor(slopes, dtype=torch.float64)


@register("alibi")
class ALiBi(PositionalEncoding):
    """A fixed linear distance penalty per head."""

    def __init__(self, *, num_heads: int, causal: bool = True) -> None:
        super().__init__()
        self.num_heads, self.causal = num_heads, bool(causal)
        self.register_buffer("slopes", alibi_slopes(num_heads).float(), persistent=False)
        self._cache = RangeCache()

    def _after_conversion(self) -> None:
        """The slopes made again: ``.half().float()`` would leave them rounded (2^(-k/2) is not a float16
        number). Biases cached before the conversion are dropped with them."""
        self.slopes = alibi_slopes(self.num_heads).to(device=self.slopes.device, dtype=kept_dtype(self.slopes.dtype))
        self._cache = RangeCache()

    def _compute(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        rel = relative_distance(q_pos, k_pos)  # j - i, (Tq, Tk) or (B, Tq, Tk)
        dist = rel.float() if self.causal else rel.abs().float()  # causal: -m (i - j) = m (j - i)
        slopes = self.slopes.to(q_pos.device)
        if rel.dim() == 3:
            return dist[:, None] * slopes[None, :, None, None] * (1.0 if self.causal else -1.0)  # (B, H, Tq, Tk)
        return dist[None] * slopes[:, None, None] * (1.0 if self.causal else -1.0)  # (H, Tq, Tk)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return self._cache.get(q_pos, k_pos, self._compute)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, causal={self.causal}"
