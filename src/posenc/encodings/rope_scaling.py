"""RoPE context-extension scalings: the inverse frequencies (and attention factor) of each method.

RoPE rotates pair i of a head by angle ``m * theta_i`` with ``theta_i = base^(-2i/d)`` (Su et al. 2021, eq. 15),
``d`` the rotary width. A scaling changes the ``theta_i`` so that a model trained on ``L`` tokens
(``original_max_len``) can read ``s * L`` (``factor = s``):

* ``linear`` -- position interpolation (Chen et al. 2023, eq. 4): ``m -> m / s``, i.e. ``theta_i / s``;
* ``ntk`` -- NTK-aware (Peng et al. 2023, eq. 14-16): ``base -> base * s^(d/(d-2))``;
* ``dynamic`` -- NTK with the factor recomputed from the current length ``l`` (Peng et al. 2023, section 3.3):
  ``base -> base * (s*l/L - (s-1))^(d/(d-2))`` when ``l > L``, plain RoPE otherwise;
* ``yarn`` -- "NTK-by-parts" (Peng et al. 2023, eq. 17-20): pairs doing fewer than ``beta_slow`` rotations over
  ``L`` are interpolated, those doing more than ``beta_fast`` are left alone, a linear ramp between; plus the
  attention temperature ``mscale = 0.1 ln s + 1`` multiplied into cos and sin (eq. 21-22);
* ``llama3`` -- Meta's Llama 3.1 rule: wavelengths longer than ``L / low_freq_factor`` are interpolated, shorter
  than ``L / high_freq_factor`` kept, a smooth blend between.

``factor = 1`` means no scaling for every method: the plain frequencies come back unchanged, bit for bit.
Everything is computed in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "SCALINGS",
    "dynamic_base",
    "inverse_frequencies",
    "ntk_base",
    "plain_inverse_frequencies",
    "yarn_mscale",
]

SCALINGS = ("none", "linear", "ntk", "dynamic", "yarn", "llama3")


def plain_inverse_frequencies(dim: int, base: float) -> Tensor:
    """``theta_i = base^(-2i/dim)`` for i = 0 .. dim/2 - 1, float64 ``(dim/2,)``."""
    exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    return 1.0 / (base**exponent)


def ntk_base(base: float, factor: float, dim: int) -> float:
    """NTK-aware base: ``base * s^(d/(d-2))`` (Peng et al. 2023, eq. 16)."""
    return base * factor ** (dim / (dim - 2))


def dynamic_base(base: float, factor: float, dim: int, length: int, original_max_len: int) -> float:
    """Dynamic NTK base at current length ``l``: ``base * (s*l/L - (s-1))^(d/(d-2))`` past ``L``, else ``base``."""
    if factor == 1.0 or length <= original_max_len:
        return base
    return base * (factor * length / original_max_len - (factor - 1)) ** (dim / (dim - 2))


def yarn_mscale(factor: float) -> float:
    """YaRN's attention factor ``0.1 ln s + 1`` (1 for ``s <= 1``); cos and sin are multiplied by it."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def _yarn(inv: Tensor, dim: int, base: float, factor: float, original: int, beta_fast: float, beta_slow: float) -> Tensor:
    """NTK-by-parts: ``h(theta) = (1 - gamma) theta / s + gamma theta`` with a ramp gamma over pair indices."""

    def pair_index(rotations: float) -> float:
        # The pair index whose wavelength fits `rotations` times into L: d ln(L / (2 pi r)) / (2 ln b).
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(pair_index(beta_fast)), 0)
    high = min(math.ceil(pair_index(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # a single-point ramp would divide by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)
    keep = 1.0 - ramp  # gamma: 1 = no interpolation (high-frequency pairs), 0 = full interpolation
    return (inv / factor) * (1.0 - keep) + inv * keep


def _llama3(inv: Tensor, factor: float, original: int, low_freq_factor: float, high_freq_factor: float) -> Tensor:
    """Llama 3.1: interpolate long wavelengths, keep short ones, blend smoothly between."""
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = original / low_freq_factor, original / high_freq_factor
    out = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, out)


def inverse_frequencies(
    dim: int,
    *,
    base: float = 10000.0,
    scaling: str = "none",
    factor: float = 1.0,
    original_max_len: int = 2048,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    length: int | None = None,
) -> tuple[Tensor, float]:
    """The ``(dim/2,)`` float64 inverse frequencies of a scaling, and the factor cos and sin are multiplied by.

    ``length`` is the current length, used by ``dynamic`` only.
    """
    inv = plain_inverse_frequencies(dim, base)
    if scaling == "none" or factor == 1.0:
        return inv, 1.0
    if scaling == "linear":
        return inv / factor, 1.0
    if scaling == "ntk":
        return plain_inverse_frequencies(dim, ntk_base(base, factor, dim)), 1.0
    if scaling == "dynamic":
        current = original_max_len if length is None else length
        return plain_inverse_frequencies(dim, dynamic_base(base, factor, dim, current, original_max_len)), 1.0
    if scaling == "yarn":
        return _yarn(inv, dim, base, factor, original_max_len, beta_fast, beta_slow), yarn_mscale(factor)
    if scaling == "llama3":
        return _llama3(inv, factor, original_max_len, low_freq_factor, high_freq_factor), 1.0
    raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}; got {scaling!r}")
