"""Checks of user input that raise ``ValueError``/``TypeError`` naming the bad value and the limit.

Never ``assert``: ``python -O`` strips asserts, and these checks must still fire.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "bool_word",
    "check_base",
    "check_choice",
    "check_divisible",
    "check_ids",
    "check_positions",
    "check_positive_int",
    "check_positive_number",
    "check_rank",
]


def bool_word(text: str) -> bool | None:
    """The truth value of a written setting (``true/false``, ``1/0``, ``yes/no``, ``on/off``, any case); None if
    ``text`` is none of these. Spec options and command-line settings read booleans with it."""
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    return None


def check_positive_int(name: str, value: Any) -> int:
    """An int > 0 (a NumPy int too; not a bool or a float), returned as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def check_base(base: float) -> None:
    """The base of a sinusoidal or rotary frequency ladder: a finite number > 1."""
    if not (math.isfinite(base) and base > 1):
        raise ValueError(f"base must be a finite number > 1, got {base}")


def check_positive_number(name: str, value: float) -> None:
    """A finite number > 0 (a rate, a tolerance, a time, a scaling factor): NaN and inf are refused by name."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def check_init_std(value: float) -> None:
    """The standard deviation a learned table is drawn with: a finite number >= 0 (NaN would fill it with NaN)."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"init_std must be a finite number >= 0, got {value}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by:
        raise ValueError(f"{name}={value} is not divisible by {by_name}={by}")


def check_rank(name: str, tensor: Any, ranks: int | Sequence[int]) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    allowed = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if tensor.dim() not in allowed:
        want = " or ".join(str(r) for r in allowed)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(tensor.shape)}")
    return tensor


def check_ids(name: str, ids: Any, vocab_size: int) -> Tensor:
    """Token ids: an integer tensor of rank 1 or 2 with every value in [0, vocab_size)."""
    check_rank(name, ids, (1, 2))
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(ids))
        if lo < 0:
            raise ValueError(f"{name} holds id {lo} < 0; ids must lie in [0, {vocab_size})")
        if hi >= vocab_size:
            raise ValueError(f"{name} holds id {hi} >= vocab size {vocab_size}; ids must lie in [0, {vocab_size})")
    return ids


def check_positions(positions: Any, name: str = "positions") -> Tensor:
    """Positions: an integer tensor ``(T,)`` or ``(B, T)`` with no negative value."""
    check_rank(name, positions, (1, 2))
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {positions.dtype}")
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"{name} holds {int(positions.min())}; positions must be >= 0")
    return positions
