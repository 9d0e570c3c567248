"""T5's bucketed relative position bias (Raffel et al. 2020, section 2.1; Hugging Face ``T5Attention``).

The signed distance ``rel = key_pos - query_pos`` is mapped to one of ``num_buckets`` buckets -- exact for small
distances, logarithmic up to ``max_distance``, one bucket beyond -- and each (bucket, head) has one learned scalar
added to the logits. Bidirectional (encoder): half the buckets per direction, keys after the query in the upper
half. Causal (decoder): only keys at or before the query count, all buckets on that side.

As in T5, one table serves a whole stack: a single spec already builds one module that every layer shares
(:func:`posenc.encodings.build_per_layer`), so every layer adds the same bias. The bucket indices depend only on
the positions, so for plain ranges they are computed once per shape; the gather from the table is per layer.

Legend: B batch, H heads, Tq / Tk query / key length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_init_std, check_positive_int
from ._relative import RangeCache, as_range, relative_distance, toeplitz
from .base import PositionalEncoding, register

__all__ = ["T5Bias", "relative_position_bucket"]


def relative_position_bucket(
    rel: Tensor, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """Bucket of each signed distance ``rel = key - query`` (long tensor of the same shape)."""
    bucket = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (rel > 0).long() * num_buckets
        n = rel.abs()
    else:
        n = (-rel).clamp(min=0)
    max_exact = num_buckets // 2
    # Distances past max_exact share buckets logarithmically up to max_distance.
    scaled = torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(n < max_exact, n, large)


@register("t5")
class T5Bias(PositionalEncoding):
    """A learned scalar per (distance bucket, head), shared by the layers of a stack."""

    def __init__(
        self, *, num_heads: int, causal: bool = False, num_buckets: int = 32, max_distance: int = 128, init_std: float = 0.02
    ) -> None:
        super().__init__()
        check_positive_int("num_heads", num_heads)
        check_positive_int("num_buckets", num_buckets)
        check_positive_int("max_distance", max_distance)
        check_init_std(init_std)
        min_buckets = 2 if causal else 4
        if num_buckets < min_buckets:
            raise ValueError(f"num_buckets must be >= {min_buckets} ({'causal' if causal else 'bidirectional'}), got {num_buckets}")
        exact = num_buckets // (2 if causal else 4)
        if max_distance <= exact:
            raise ValueError(f"max_distance must exceed the {exact} exact buckets, got {max_distance}")
        self.num_heads, self.causal = num_heads, bool(causal)
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.weight = nn.Parameter(torch.randn(num_buckets, num_heads) * init_std)  # (buckets, H)
        self._cache = RangeCache()

    def buckets(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Bucket indices ``(Tq, Tk)`` or ``(B, Tq, Tk)``."""

        def compute(qp: Tensor, kp: Tensor) -> Tensor:
            return relative_position_bucket(
                relative_distance(qp, kp), bidirectional=not self.causal,
                num_buckets=self.num_buckets, max_distance=self.max_distance,
            )

        return self._cache.get(q_pos, k_pos, compute)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        qr, kr = as_range(q_pos), as_range(k_pos)
        if qr is not None and kr is not None and qr[1] and kr[1]:
            return self._toeplitz_bias(qr, kr, q_pos.device)
        values = nn.functional.embedding(self.buckets(q_pos, k_pos), self.weight)  # (..., Tq, Tk, H)
        return values.movedim(-1, -3)  # (H, Tq, Tk) or (B, H, Tq, Tk)

    def _toeplitz_bias(self, qr: tuple[int, int], kr: tuple[int, int], device: torch.device) -> Tensor:
        """Plain ranges of positions: the bias depends on k - q only, so look up the Tq + Tk - 1 distinct
        distances once and lay them out as a Toeplitz matrix. Same values as the (Tq, Tk) gather, but the
        backward adds up Tq + Tk - 1 rows instead of scattering H·Tq·Tk values into the table."""
        (q0, tq), (k0, tk) = qr, kr
        rel = torch.arange(k0 - q0 - (tq - 1), k0 - q0 + tk, device=device)  # (Tq + Tk - 1,): k - q, ascending
        buckets = relative_position_bucket(
            rel, bidirectional=not self.causal, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        values = nn.functional.embedding(buckets, self.weight).t()  # (H, Tq + Tk - 1)
        return toeplitz(values, tq, tk)  # (H, Tq, Tk): [h, i, j] = values[h, (j - i) + Tq - 1]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, causal={self.causal}, num_buckets={self.num_buckets}, max_distance={self.max_distance}"
