"""The paper's formulas in NumPy, for teaching and as golden values for the tests (no torch here).

Vaswani et al. (2017), section 3.5:

    PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))

This corrects the note the project started from, whose code used ``2 * arange(d_model)`` as the exponent (so
the frequencies were wrong) and returned a ``(T, 2 * d_model)`` array of a cos block beside a sin block.
"""

from __future__ import annotations

import numpy as np

__all__ = ["incorporate_positional_encoding", "positional_encoding"]


def positional_encoding(
    sequence_length: int,
    d_model: int,
    *,
    layout: str = "interleaved",
    frequencies: str = "paper",
    base: float = 10000.0,
) -> np.ndarray:
    """The sinusoidal table, shape ``(sequence_length, d_model)``, float64.

    ``layout="interleaved"`` puts sin at even columns and cos at odd ones, as the paper's formula;
    ``layout="concat"`` puts all sines then all cosines, as fairseq and tensor2tensor do. The two are a
    permutation of each other's columns. ``frequencies="paper"`` uses 1/base^(2i/d); ``"tensor2tensor"``
    spaces the n = ceil(d/2) frequencies evenly in log space, a step of log(base)/(n - 1).
    With an odd ``d_model`` there is one more sine than cosine: the last column is a sine term.
    """
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, (int, np.integer)) or sequence_length < 0:
        raise ValueError(f"sequence_length must be a non-negative int, got {sequence_length!r}")
    if isinstance(d_model, bool) or not isinstance(d_model, (int, np.integer)) or d_model <= 0:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    if isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating)) or not (
            np.isfinite(base) and base > 1):
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    if layout not in ("interleaved", "concat"):
        raise ValueError(f"layout must be 'interleaved' or 'concat', got {layout!r}")
    if frequencies not in ("paper", "tensor2tensor"):
        raise ValueError(f"frequencies must be 'paper' or 'tensor2tensor', got {frequencies!r}")
    pos = np.arange(sequence_length, dtype=np.float64)[:, None]  # (T, 1)
    n_sin = (d_model + 1) // 2
    i = np.arange(n_sin, dtype=np.float64)[None, :]  # (1, n_sin): the pair index i
    if frequencies == "paper":
        angle = pos / np.power(base, 2.0 * i / d_model)  # pos / 10000^(2i/d)
    else:
        angle = pos * np.exp(-i * np.log(base) / max(n_sin - 1, 1))
    sin, cos = np.sin(angle), np.cos(angle[:, : d_model // 2])
    if layout == "concat":
        return np.concatenate([sin, cos], axis=1)
    pe = np.zeros((sequence_length, d_model), dtype=np.float64)
    pe[:, 0::2] = sin  # even columns 2i
    pe[:, 1::2] = cos  # odd columns 2i+1
    return pe


def incorporate_positional_encoding(
    input_embeddings: np.ndarray, *, mode: str = "add", pe_dim: int | None = None, **pe_options: object
) -> np.ndarray:
    """Add (the paper) or concatenate positional encodings to ``(batch, seq, d_model)`` embeddings.

    Returns a new array; the caller's array is never written. With ``mode="concat"`` the result is
    ``(batch, seq, d_model + pe_dim)`` wide (``pe_dim`` defaults to ``d_model``).
    """
    x = np.asarray(input_embeddings)
    if x.ndim != 3:
        raise ValueError(f"input_embeddings must be (batch, seq, d_model), got shape {x.shape}")
    _, seq, d_model = x.shape
    if mode == "add":
        if pe_dim is not None and pe_dim != d_model:  # an added encoding has the embeddings' width
            raise ValueError(f"pe_dim={pe_dim} applies to mode='concat'; mode='add' adds d_model={d_model} columns")
        return x + positional_encoding(seq, d_model, **pe_options)[None]
    if mode == "concat":
        pe = positional_encoding(seq, d_model if pe_dim is None else pe_dim, **pe_options)
        return np.concatenate([x, np.broadcast_to(pe, (x.shape[0], *pe.shape))], axis=-1)
    raise ValueError(f"mode must be 'add' or 'concat', got {mode!r}")
