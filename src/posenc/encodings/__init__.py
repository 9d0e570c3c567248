"""Positional encodings behind one protocol, buildable by name: ``build("rope:base=5e5", head_dim=64)``.

Importing this package registers every family; ``names()`` lists them.
"""

from __future__ import annotations

from . import (  # noqa: F401  (registration)
    alibi,
    fire,
    kerple,
    learned,
    none,
    randomized,
    rotary,
    shaw,
    sinusoidal,
    t5,
    xpos,
)
from .alibi import ALiBi, alibi_slopes
from .base import (
    CONTEXT_KEYS,
    PositionalEncoding,
    build,
    build_per_layer,
    names,
    options,
    parse_layers,
    parse_spec,
    register,
)
from .fire import FIRE
from .kerple import Kerple
from .learned import Learned
from .none import NoPE
from .randomized import Randomized
from .rotary import RoPE, apply_rotary, convert_rope_layout
from .shaw import Shaw
from .sinusoidal import Sinusoidal, sinusoidal_table
from .t5 import T5Bias, relative_position_bucket
from .xpos import XPos

__all__ = [
    "ALiBi",
    "CONTEXT_KEYS",
    "FIRE",
    "Kerple",
    "Learned",
    "NoPE",
    "PositionalEncoding",
    "Randomized",
    "RoPE",
    "Shaw",
    "Sinusoidal",
    "T5Bias",
    "XPos",
    "alibi_slopes",
    "apply_rotary",
    "build",
    "build_per_layer",
    "convert_rope_layout",
    "names",
    "options",
    "parse_layers",
    "parse_spec",
    "register",
    "relative_position_bucket",
    "sinusoidal_table",
]
