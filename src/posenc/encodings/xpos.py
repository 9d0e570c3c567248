"""xPos: extrapolatable position embedding (Sun et al. 2022, "A Length-Extrapolatable Transformer", section 3).

RoPE plus an exponential decay: pair i of a query at position n is rotated as in RoPE and multiplied by
``zeta_i^(n / gamma)``, a key at position m by ``zeta_i^(-m / gamma)``, with ``zeta_i = (2i/d + 0.4) / 1.4`` and
``gamma = scale_base`` (512). The logit then carries ``zeta_i^((n - m) / gamma)``, which decays with distance
and depends on ``n - m`` only.

**Causal only.** For a key after the query (m > n) the factor ``zeta^((n - m)/gamma)`` *grows* without bound with
the distance, so bidirectional attention would favour the farthest future keys; the paper uses xPos in decoders
(its "blockwise causal attention"). Building it with ``causal=False`` is a ``ValueError``.

Since only ``n - m`` matters, positions are measured from the middle of the current keys, which keeps every
factor near 1 (a fixed origin would overflow float32 after a few tens of thousands of positions). That centre
moves as a cache grows, so the encoding sets ``rotate_after_cache``: keys are cached before rotation.

Legend: B batch, H heads, T length, Dh head width.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_positive_number
from .base import kept_dtype, made_for_inference_only, register
from .rotary import RoPE

__all__ = ["XPos"]


@register("xpos")
class XPos(RoPE):
    """RoPE with a per-pair exponential decay of the logits with distance."""

    def __init__(
        self,
        *,
        head_dim: int,
        causal: bool = True,
        base: float = 10000.0,
        scale_base: float = 512.0,
        gamma: float = 0.4,
        layout: Literal["interleaved", "half"] = "interleaved",
    ) -> None:
        if not causal:
            raise ValueError(
                "xpos is causal only (Sun et al. 2022): with causal=False a key after the query gets the factor "
                "zeta^((n - m)/scale_base) > 1, which grows without bound with the distance; use rope or a bias "
                "family for bidirectional attention"
            )
        check_positive_number("scale_base", scale_base)
        check_positive_number("gamma", gamma)
        super().__init__(head_dim=head_dim, base=base, layout=layout)
        self.scale_base, self.gamma = float(scale_base), float(gamma)
        half = self.rot_dim // 2
        zeta = (torch.arange(half, dtype=torch.float64) * 2 / self.rot_dim + gamma) / (1 + gamma)
        # float64 (R/2,), a plain attribute on the CPU so that model.to(dtype) cannot round it (as inv_freq).
        self.log_zeta64 = zeta.log()
        self.register_buffer("log_zeta", self.log_zeta64.float(), persistent=False)  # (R/2,), made from it
        self.rotate_after_cache = True

    def _after_conversion(self) -> None:
        """log(zeta) made again from the float64 values: ``.half().float()`` would leave it rounded."""
        self.log_zeta = self.log_zeta64.to(device=self.log_zeta.device, dtype=kept_dtype(self.log_zeta.dtype))

    def _log_zeta(self, device: torch.device) -> Tensor:
        """log(zeta) ``(R/2,)`` on ``device`` (float32, or float64 in a float64 module); made again when it is
        elsewhere, or when it was made under inference_mode and is now used outside it."""
        lz = self.log_zeta
        if lz.device != device or lz.dtype != kept_dtype(lz.dtype) or made_for_inference_only(lz):
            self.log_zeta = self.log_zeta64.to(device=device, dtype=kept_dtype(lz.dtype))
        return self.log_zeta

    def _decay(self, offset: Tensor, sign: float, like: Tensor) -> Tensor:
        """``zeta^(sign * offset / scale_base)`` per dim, shaped to multiply ``like`` ``(B, H, T, Dh)``."""
        power = offset.to(torch.float32).unsqueeze(-1) * (sign / self.scale_base) * self._log_zeta(offset.device)
        if self.layout == "interleaved":
            power = power.repeat_interleave(2, dim=-1)
        else:
            power = torch.cat([power, power], dim=-1)
        # (T, R) or (B, T, R); an odd last dim is not rotated (see rotary_width) and not decayed either
        scale = torch.exp(F.pad(power, (0, like.shape[-1] - self.rot_dim)))
        if scale.dim() == 3:
            scale = scale.unsqueeze(1)  # (B, 1, T, Dh)
        return scale.to(like.dtype)

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        q, k = super().rotate(q, k, q_pos, k_pos)
        if k_pos.shape[-1] == 0:  # no keys (an empty input): nothing to decay, and no middle to measure from
            return q, k
        # The middle of the keys of each sequence: (), or (B, 1) for batched positions.
        centre = torch.div(k_pos.amax(-1, keepdim=True) + k_pos.amin(-1, keepdim=True), 2, rounding_mode="floor")
        q = q * self._decay(q_pos - centre, 1.0, q)
        k = k * self._decay(k_pos - centre, -1.0, k)
        return q, k

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale_base={self.scale_base}, gamma={self.gamma}"


