"""What the relative-position families share: the signed distance matrix and a small cache of it.

Bias families (ALiBi, T5, Shaw, Kerple, FIRE) all start from ``rel[..., i, j] = k_pos[j] - q_pos[i]``. When the
positions are plain 1-D ranges -- the common case of an unpadded training batch -- the matrix (and whatever a
family derives from it without parameters: buckets, clipped indices, a fixed bias) depends only on the two ranges,
so it is computed once and reused by every layer and every later forward of the same shape.

Legend: B batch, Tq / Tk query / key length.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

__all__ = ["RangeCache", "as_range", "relative_distance", "toeplitz"]


def as_range(positions: Tensor) -> tuple[int, int] | None:
    """``(start, length)`` when ``positions`` is a 1-D run ``start, start+1, ...``; else None."""
    if positions.dim() != 1:
        return None
    n = positions.shape[0]
    if n == 0:
        return (0, 0)
    start = int(positions[0])
    if n > 1 and int(positions[-1]) - start != n - 1:
        return None
    if n > 2 and not bool((positions.diff() == 1).all()):
        return None
    return (start, n)


def relative_distance(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """Signed ``k_pos[j] - q_pos[i]``: ``(Tq, Tk)`` for 1-D positions, ``(B, Tq, Tk)`` if either is ``(B, T)``."""
    return k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)


def toeplitz(values: Tensor, q_len: int, k_len: int) -> Tensor:
    """Per-distance values ``(H, Tq + Tk - 1)``, ascending in ``k - q``, laid out as ``(H, Tq, Tk)`` with
    ``out[h, i, j] = values[h, (j - i) + Tq - 1]``.

    For plain position ranges a distance-only bias needs only these Tq + Tk - 1 values; laying them out with a
    sliding window (instead of a gather over a (Tq, Tk) index) makes the backward add up Tq + Tk - 1 diagonals
    rather than scatter H·Tq·Tk values.
    """
    windows = values.unfold(-1, k_len, 1)  # (H, Tq, Tk): windows[h, r, c] = values[h, r + c]
    return windows.flip(-2)  # row i is window Tq - 1 - i


class RangeCache:
    """A few entries ``key -> tensor`` for positions that are plain ranges, dropped oldest first.

    Only parameter-free results go in (indices, fixed biases), so a cached tensor never holds an autograd graph.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._store: OrderedDict[Hashable, Tensor] = OrderedDict()

    def get(
        self,
        q_pos: Tensor,
        k_pos: Tensor,
        compute: Callable[[Tensor, Tensor], Tensor],
        *,
        shift_invariant: bool = True,
        extra: Hashable = None,
    ) -> Tensor:
        """``compute(q_pos, k_pos)``, served from the cache when both are ranges.

        ``shift_invariant`` results are keyed by the offset between the ranges only; others by both starts.
        """
        qr, kr = as_range(q_pos), as_range(k_pos)
        if qr is None or kr is None:
            return compute(q_pos, k_pos)
        starts = (qr[0] - kr[0],) if shift_invariant else (qr[0], kr[0])
        # Tensors made under inference_mode cannot take part in autograd later: keep them apart.
        key = (starts, qr[1], kr[1], q_pos.device, torch.is_inference_mode_enabled(), extra)
        hit = self._store.get(key)
        if hit is None:
            hit = compute(q_pos, k_pos)
            self._store[key] = hit
            if len(self._store) > self.size:
                self._store.popitem(last=False)
        else:
            self._store.move_to_end(key)
        return hit

