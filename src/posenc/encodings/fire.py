"""FIRE: functional interpolation for relative positions (Li et al., ICLR 2024, arXiv 2310.04418).

The bias of query i and key j is a small MLP of the log-transformed, normalized distance:

    b(i, j) = f_theta( psi(i - j) / psi(max(L, i)) ),     psi(x) = log(c x + 1)

with learnable c (init 0.1) and threshold L (init 512), f_theta: 1 -> 32 -> heads with ReLU (the sizes of a public
reimplementation). Normalizing by the query position ("progressive interpolation") maps every distance into
[0, 1] whatever the length; the threshold L keeps short contexts from being stretched.

* Causal: keys after the query are masked anyway; their distance is taken as 0 so that psi stays defined.
* Bidirectional (the paper treats decoders only): posenc feeds the MLP two inputs, the normalized ``|i - j|`` and
  the direction ``sign(j - i)``, so the two sides can learn different biases (``1 -> 32`` becomes ``2 -> 32``).

While every query position is below L the normalizer is the constant psi(L), the bias depends on ``j - i`` only,
and the MLP is evaluated once per distinct distance (at most Tq + Tk - 1 of them) and gathered; otherwise it is
evaluated on the whole (i, j) grid. For plain position ranges the per-distance values are laid out as a Toeplitz
matrix (a sliding window) rather than gathered, so the backward sums diagonals instead of scattering H·Tq·Tk
values. The distance matrix of other positions is cached. All give the same values; gradients reach the MLP, c and
L either way.

Legend: B batch, H heads, Tq / Tk query / key length, N distinct distances.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_positive_int, check_positive_number
from ._relative import RangeCache, as_range, relative_distance, toeplitz
from .base import PositionalEncoding, register

__all__ = ["FIRE"]

EPS = 1e-6


@register("fire")
class FIRE(PositionalEncoding):
    """A learned function of the log-normalized relative distance, per head."""

    def __init__(
        self, *, num_heads: int, causal: bool = True, hidden: int = 32, init_c: float = 0.1, init_threshold: float = 512.0
    ) -> None:
        super().__init__()
        check_positive_int("num_heads", num_heads)
        check_positive_int("hidden", hidden)
        check_positive_number("init_c", init_c)
        if not (math.isfinite(init_threshold) and init_threshold >= 1):  # NaN fails every comparison: test it
            raise ValueError(f"init_threshold must be a finite number >= 1, got {init_threshold}")
        self.num_heads, self.causal = num_heads, bool(causal)
        self.mlp = nn.Sequential(nn.Linear(1 if causal else 2, hidden), nn.ReLU(), nn.Linear(hidden, num_heads))
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))
        self._cache = RangeCache()

    def _psi(self, x: Tensor) -> Tensor:
        return torch.log1p(self.c.clamp(min=EPS) * x)

    def _features(self, rel: Tensor, norm_pos: Tensor) -> Tensor:
        """Signed ``rel = j - i`` and ``max(L, i)`` (broadcastable) -> MLP inputs ``(..., 1 or 2)``."""
        dtype = self.c.dtype  # the module's: float32 unless it was cast (model.double(), model.to(torch.bfloat16))
        dist = (-rel).clamp(min=0) if self.causal else rel.abs()
        x = self._psi(dist.to(dtype)) / (self._psi(norm_pos.to(dtype)) + EPS)
        if self.causal:
            return x.unsqueeze(-1)
        return torch.stack([x, torch.sign(rel).to(dtype)], dim=-1)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        threshold = self.threshold.clamp(min=1.0)
        empty = q_pos.numel() == 0 or k_pos.numel() == 0  # no max to take: the grid path gives the empty bias
        # normalizer psi(L) for every query: a function of j - i only
        if not empty and int(q_pos.max()) < float(threshold.detach()):
            lo = int(k_pos.min()) - int(q_pos.max())
            hi = int(k_pos.max()) - int(q_pos.min())
            rel_values = torch.arange(lo, hi + 1, device=q_pos.device)  # (N,)
            table = self.mlp(self._features(rel_values, threshold))  # (N, H)
            qr, kr = as_range(q_pos), as_range(k_pos)
            if qr is not None and kr is not None:  # N = Tq + Tk - 1, ascending in k - q: a Toeplitz layout
                return toeplitz(table.t(), qr[1], kr[1])  # (H, Tq, Tk)
            rel = self._cache.get(q_pos, k_pos, relative_distance)  # (Tq, Tk) or (B, Tq, Tk)
            values = F.embedding(rel - lo, table)  # (..., Tq, Tk, H)
        else:
            rel = self._cache.get(q_pos, k_pos, relative_distance)
            norm_pos = torch.maximum(threshold, q_pos.to(threshold.dtype)).unsqueeze(-1)  # (..., Tq, 1)
            values = self.mlp(self._features(rel, norm_pos))  # (..., Tq, Tk, H)
        return values.movedim(-1, -3)  # (H, Tq, Tk) or (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, causal={self.causal}"
