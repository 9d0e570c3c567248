"""posenc: Transformers in which the positional encoding is a first-class, swappable part.

    import posenc
    enc = posenc.encodings.build("rope:base=10000", head_dim=64)
    model = posenc.models.LanguageModel(posenc.models.LMConfig(vocab_size=100, encoding="alibi"))

Importing is quiet: no output, no downloads, no global state changed.
"""

from __future__ import annotations

from . import attention, encodings, models, nn, reference
from .models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig
from .nn import Transformer, TransformerDecoder, TransformerEncoder

__version__ = "0.1.0"

__all__ = [
    "LMConfig",
    "LanguageModel",
    "Seq2Seq",
    "Seq2SeqConfig",
    "Transformer",
    "TransformerDecoder",
    "TransformerEncoder",
    "attention",
    "encodings",
    "models",
    "nn",
    "reference",
]
