"""Positional encodings behind one protocol, buildable by name: ``build("rope:base=5e5", head_dim=64)``.

Importing this package registers every family; ``names()`` lists them.
"""

from __future__ import annotations

from . import learned, none, sinusoidal  # noqa: F401  (registration)
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
from .learned import Learned
from .none import NoPE
from .sinusoidal import Sinusoidal, sinusoidal_table

__all__ = [
    "CONTEXT_KEYS",
    "Learned",
    "NoPE",
    "PositionalEncoding",
    "Sinusoidal",
    "build",
    "build_per_layer",
    "names",
    "options",
    "parse_layers",
    "parse_spec",
    "register",
    "sinusoidal_table",
]
