"""NoPE: no positional encoding at all.

Haviv et al. (2022), "Transformer Language Models without Positional Encodings Still Learn Positional
Information": a causal mask alone lets a decoder infer positions, so NoPE is close to the others in a causal
language model and far worse in a bidirectional encoder. Kazemnejad et al. (2023) find it among the best at
length generalization. The protocol's defaults are identities, so this class adds nothing to the base.
"""

from __future__ import annotations

from .base import PositionalEncoding, register

__all__ = ["NoPE"]


@register("none")
class NoPE(PositionalEncoding):
    """No positional information: every hook is the identity."""

    def __init__(self) -> None:
        super().__init__()
