"""KERPLE: kernelized relative positional embedding (Chi, Fan, Ramadge & Rudnicky, NeurIPS 2022).

A conditionally positive definite kernel of the distance ``|i - j|`` becomes a per-head additive bias:

* ``log``:   ``-r1 * log(1 + r2 |i - j|)``   (r1 ~ U(0, 2), r2 ~ U(0, 1) at init)
* ``power``: ``-r1 * |i - j|^r2``            (r1 ~ U(0, 1), r2 ~ U(0, 2) at init)

r1 and r2 are learned per head. Each forward first clamps their stored values in place, as the authors' code does:
r1, r2 >= 1e-2, and for the power form r2 <= 2 (``|i - j|^r2`` is conditionally positive definite for 0 < r2 <= 2
only), which keeps the kernel valid. A parameter an optimizer step pushed out of range then sits at the bound and
still gets its gradient (clamping a copy in the graph instead would give it none, for good). The paper studies
causal language models; for bidirectional attention the same symmetric ``|i - j|`` is used. The distances of
plain-range positions are cached.

Legend: B batch, H heads, Tq / Tk query / key length.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int
from ._relative import RangeCache, relative_distance
from .base import PositionalEncoding, register

__all__ = ["Kerple"]

MIN_PARAM = 1e-2
MAX_POWER = 2.0  # the power form's largest exponent r2


@register("kerple")
class Kerple(PositionalEncoding):
    """Learned logarithmic or power distance penalty per head."""

    def __init__(self, *, num_heads: int, form: Literal["log", "power"] = "log") -> None:
        super().__init__()
        check_positive_int("num_heads", num_heads)
        self.num_heads, self.form = num_heads, check_choice("form", form, ("log", "power"))
        r1_max, r2_max = (2.0, 1.0) if form == "log" else (1.0, 2.0)
        self.r1 = nn.Parameter(torch.rand(num_heads) * r1_max)
        self.r2 = nn.Parameter(torch.rand(num_heads) * r2_max)
        self._cache = RangeCache()

    def distance(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """``|i - j|`` as float ``(Tq, Tk)`` or ``(B, Tq, Tk)``."""
        return self._cache.get(q_pos, k_pos, lambda qp, kp: relative_distance(qp, kp).abs().float())

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        dist = self.distance(q_pos, k_pos)
        shape = (-1, 1, 1)
        if dist.dim() == 3:
            dist = dist[:, None]  # (B, 1, Tq, Tk)
        self._project()
        r1, r2 = self.r1.view(shape), self.r2.view(shape)  # (H, 1, 1)
        if self.form == "log":
            return -r1 * torch.log1p(r2 * dist)  # (H, Tq, Tk) or (B, H, Tq, Tk)
        return -r1 * dist.pow(r2)

    def _project(self) -> None:
        """Clamp r1 and r2 into the kernel's range in place (through ``.data``: no autograd record, no version bump,
        so a graph built before is unaffected)."""
        self.r1.data.clamp_(min=MIN_PARAM)
        self.r2.data.clamp_(min=MIN_PARAM, max=MAX_POWER if self.form == "power" else None)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, form={self.form!r}"
