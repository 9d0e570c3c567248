"""The numbers behind posenc's pictures of encodings, as NumPy arrays (drawing lives in ``plots.py``).

Every function here builds the encoding through the registry and reads it through the protocol's hooks, so a
picture shows what attention actually receives, for any registered family:

* :func:`encoding_matrix` -- positions x dimensions: what ``embed`` adds to a zero embedding (absolute
  families), or what ``rotate`` does to one fixed unit query (multiplicative families);
* :func:`position_similarity` -- dot products of those rows (Vaswani et al. 2017 sec. 3.5: for sinusoids
  ``PE(m) . PE(n)`` depends on ``m - n`` only; for rotations the same holds by RoFormer eq. 16);
* :func:`rope_wavelengths` -- ``lambda_i = 2 pi base^(2i/d)`` (YaRN sec. 3.2), the dimensions whose wavelength
  exceeds the training context are the ones that never complete a turn in training;
* :func:`bias_by_distance` -- the logits bias per head against the query-key distance ``i - j``
  (ALiBi: ``-m_h (i - j)``; T5: a learned scalar per bucket);
* :func:`attention_maps` -- the attention weights of every attention module of a model on one input, and
  :func:`attention_axes` -- which tokens label each map's rows (queries) and columns (keys).

Legend: T positions, D width, H heads, Dh head width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_base, check_positive_int, check_positive_number
from ..attention import MultiHeadAttention
from ..encodings import PositionalEncoding, build

__all__ = [
    "AttentionAxes",
    "attention_axes",
    "attention_maps",
    "bias_by_distance",
    "build_for_picture",
    "encoding_matrix",
    "position_similarity",
    "rope_wavelengths",
]


def build_for_picture(
    spec: str | PositionalEncoding, *, d_model: int, num_heads: int, causal: bool = True
) -> PositionalEncoding:
    """Build an encoding with a model's context (width, heads, head width), in evaluation mode."""
    check_positive_int("d_model", d_model)
    check_positive_int("num_heads", num_heads)
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    enc = build(spec, d_model=d_model, num_heads=num_heads, head_dim=d_model // num_heads, causal=causal)
    return enc.eval()  # randomized positions and dropout switch off: the picture shows inference


@torch.no_grad()
def encoding_matrix(
    spec: str | PositionalEncoding, *, length: int, d_model: int = 64, num_heads: int = 1
) -> np.ndarray:
    """``(T, D)`` for an absolute encoding (what it adds or appends to a zero embedding), ``(T, Dh)`` for a
    multiplicative one (one fixed unit query ``[1, 1, ...]/sqrt(Dh)`` rotated to each position), zeros for NoPE.

    A pure bias encoding has no positions x dimensions matrix: a ``ValueError`` points to :func:`bias_by_distance`;
    nor has Shaw's (its relative vectors act inside attention): a ``ValueError`` too, not NoPE's zeros.
    """
    check_positive_int("length", length)
    enc = build_for_picture(spec, d_model=d_model, num_heads=num_heads)
    positions = torch.arange(length)
    if enc.uses_embed:
        width = enc.input_width(d_model)
        out = enc.embed(torch.zeros(1, length, width), positions)[0]  # (T, D)
        return out[:, width:].double().numpy() if width < out.shape[-1] else out.double().numpy()
    if enc.uses_rotate:
        head_dim = d_model // num_heads
        q = torch.full((1, 1, length, head_dim), 1.0 / math.sqrt(head_dim))  # (1, 1, T, Dh)
        rotated, _ = enc.rotate(q, q.clone(), positions, positions)
        return rotated[0, 0].double().numpy()  # (T, Dh)
    if enc.uses_bias:
        raise ValueError(
            f"encoding {enc.name!r} adds a bias to the attention logits and has no positions x dimensions "
            "matrix; picture it with bias_by_distance (posenc plot bias)"
        )
    if enc.uses_content_bias or enc.uses_value_term:  # Shaw: learned relative vectors inside attention
        raise ValueError(
            f"encoding {enc.name!r} adds learned relative-position vectors inside attention (to the keys' logits "
            "and the values) and has no positions x dimensions matrix; a zero picture would pass for NoPE's"
        )
    return np.zeros((length, d_model))


def position_similarity(matrix: np.ndarray) -> np.ndarray:
    """``S[m, n] = <row m, row n>``, ``(T, T)``: how alike two positions look to attention."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"matrix must be (positions, dimensions), got shape {m.shape}")
    return m @ m.T


def rope_wavelengths(head_dim: int, *, base: float = 10000.0, factor: float = 1.0) -> np.ndarray:
    """Wavelength in positions of each rotary pair, ``lambda_i = 2 pi base^(2i/d) * factor``, ``(Dh/2,)``.

    ``factor`` is position interpolation's stretch (Chen et al. 2023: positions / s stretch every wavelength
    by s). Pairs with ``lambda_i`` above the training context never complete a turn during training (YaRN
    sec. 3.2, ``r(d) = L / lambda_d``).
    """
    check_positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(f"rotary head_dim must be even, got {head_dim}")
    check_base(base)
    check_positive_number("factor", factor)
    i = np.arange(head_dim // 2, dtype=np.float64)
    return 2 * np.pi * np.power(float(base), 2 * i / head_dim) * factor


@torch.no_grad()
def bias_by_distance(
    spec: str | PositionalEncoding, *, num_heads: int, max_distance: int, causal: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, bias)``: the logits bias ``(H, n)`` an encoding adds between a query at position i and a key
    at j, against ``d = i - j`` -- ``0..max_distance`` (keys in the past) when causal, ``-max..max`` otherwise.
    """
    check_positive_int("max_distance", max_distance)
    check_positive_int("num_heads", num_heads)
    enc = build_for_picture(spec, d_model=8 * num_heads, num_heads=num_heads, causal=causal)
    if not enc.uses_bias:
        raise ValueError(f"encoding {enc.name!r} adds no bias to the attention logits; {_instead(enc)}")
    distances = np.arange(0 if causal else -max_distance, max_distance + 1)
    q_pos = torch.tensor([max_distance])  # (1,) the query sits far enough right for every distance
    k_pos = torch.as_tensor(max_distance - distances)  # (n,) key j = i - d
    bias = enc.bias(q_pos, k_pos)  # (H, 1, n)
    if bias is None:
        raise ValueError(f"encoding {enc.name!r} returned no bias")
    if bias.dim() == 4:
        bias = bias[0]
    return distances, bias[:, 0, :].double().numpy()  # (n,), (H, n)


def _instead(enc: PositionalEncoding) -> str:
    """Which picture shows an encoding that has no bias: the matrix, unless it has none either (Shaw's relative
    vectors act inside attention; NoPE adds nothing), which :func:`encoding_matrix` refuses or draws as zeros."""
    if enc.uses_embed or enc.uses_rotate:
        return "picture it with posenc plot matrix"
    if enc.uses_content_bias or enc.uses_value_term:
        return ("its learned relative-position vectors act inside attention, so neither a bias nor a matrix "
                "pictures it; posenc plot attention shows a trained run's attention")
    return "it adds no positional signal to picture"


def _self_attentions(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


@torch.no_grad()
def attention_maps(model: nn.Module, *inputs: Tensor, **kwargs: object) -> dict[str, np.ndarray]:
    """Run ``model(*inputs, **kwargs)`` once and return every attention's weights of the first example,
    ``{module name: (H, Tq, Tk)}`` in module order (each row sums to one; masked keys get zero)."""
    attns = _self_attentions(model)
    if not attns:
        raise ValueError(f"{type(model).__name__} holds no posenc MultiHeadAttention to read weights from")
    was_training = model.training
    model.eval()
    try:
        for _, m in attns:
            m.capture_weights, m.last_weights = True, None
        model(*inputs, **kwargs)
        out = {}
        for name, m in attns:
            if m.last_weights is not None:
                out[name] = m.last_weights[0].double().numpy()  # (H, Tq, Tk)
        return out
    finally:
        for _, m in attns:
            m.capture_weights, m.last_weights = False, None
        model.train(was_training)



@dataclass(frozen=True)
class AttentionAxes:
    """What one attention map shows: its kind, a label per row (query) and a label per column (key)."""

    kind: str  # "self" (decoder-only), "encoder self", "decoder self" or "cross"
    queries: list[str]
    keys: list[str]


def attention_axes(
    model: nn.Module, names: Iterable[str], *, labels: Sequence[str], source_labels: Sequence[str] | None = None
) -> dict[str, AttentionAxes]:
    """The axes of each named attention map of ``model``: an encoder's self-attention runs over the source
    (``source_labels`` on both axes), a decoder's over ``labels`` (the target, or a decoder-only model's whole
    sequence), and cross-attention from target queries (rows) to source keys (columns). Labelling a cross map with
    the target on both axes would name source columns after target tokens."""
    encoder = getattr(model, "encoder", None)
    in_encoder = {id(m) for m in encoder.modules()} if isinstance(encoder, nn.Module) else set()
    out = {}
    for name in names:
        module = model.get_submodule(name)
        if getattr(module, "cross", False):
            out[name] = AttentionAxes("cross", list(labels), _source(source_labels, name))
        elif id(module) in in_encoder:
            src = _source(source_labels, name)
            out[name] = AttentionAxes("encoder self", src, src)
        else:
            kind = "decoder self" if source_labels is not None else "self"
            out[name] = AttentionAxes(kind, list(labels), list(labels))
    return out


def _source(source_labels: Sequence[str] | None, name: str) -> list[str]:
    if source_labels is None:
        raise ValueError(f"{name} attends over a source sequence: give source_labels")
    return list(source_labels)
