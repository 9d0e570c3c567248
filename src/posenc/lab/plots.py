"""PNG pictures of encodings and of length-generalization results, drawn with matplotlib's Agg canvas.

Only drawing lives here; the numbers come from :mod:`posenc.lab.arrays` (and the results table of
:mod:`posenc.lab.compare`), where the tests check them. matplotlib is imported inside each function, through
``Figure`` and ``FigureCanvasAgg`` rather than pyplot, so no global backend or state is touched and importing
posenc does not need matplotlib (it ships in the ``lab`` extra).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .arrays import AttentionAxes

__all__ = [
    "attention_figure",
    "plot_attention",
    "plot_bias",
    "plot_matrix",
    "plot_metric_vs_length",
    "plot_similarity",
    "plot_wavelengths",
]


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("posenc's pictures need matplotlib: pip install 'posenc[lab]'") from err
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: str | pathlib.Path) -> pathlib.Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = pathlib.Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"pictures are written as PNG; the path must end in .png, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(out))
    return out


def plot_matrix(matrix: np.ndarray, path: str | pathlib.Path, *, title: str = "") -> pathlib.Path:
    """Heat map of an encoding matrix, positions down, dimensions across."""
    m = np.asarray(matrix)
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    lim = float(np.abs(m).max()) or 1.0
    img = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xlabel("dimension")
    ax.set_ylabel("position")
    ax.set_title(title or "encoding matrix")
    fig.colorbar(img, ax=ax)
    return _save(fig, path)


def plot_similarity(similarity: np.ndarray, path: str | pathlib.Path, *, title: str = "") -> pathlib.Path:
    """Heat map of the dot products of positions' encodings."""
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    img = ax.imshow(np.asarray(similarity), cmap="viridis", interpolation="nearest")
    ax.set_xlabel("position n")
    ax.set_ylabel("position m")
    ax.set_title(title or "similarity of positions <PE(m), PE(n)>")
    fig.colorbar(img, ax=ax)
    return _save(fig, path)


def plot_wavelengths(
    wavelengths: Mapping[str, np.ndarray], path: str | pathlib.Path, *, context: int | None = None, title: str = ""
) -> pathlib.Path:
    """Wavelength per rotary pair (log scale), one line per setting, the context length as a line."""
    fig = _figure(6.5, 4)
    ax = fig.add_subplot()
    for label, lam in wavelengths.items():
        ax.plot(np.arange(len(lam)), lam, marker=".", label=label)
    if context is not None:
        ax.axhline(context, color="k", linestyle="--", label=f"context {context}")
    ax.set_yscale("log")
    ax.set_xlabel("rotary pair i")
    ax.set_ylabel("wavelength (positions)")
    ax.set_title(title or "RoPE wavelength 2*pi*base^(2i/d)")
    ax.legend()
    return _save(fig, path)


def plot_bias(distances: np.ndarray, bias: np.ndarray, path: str | pathlib.Path, *, title: str = "") -> pathlib.Path:
    """The logits bias against the query-key distance, one line per head."""
    fig = _figure(6.5, 4)
    ax = fig.add_subplot()
    for h, row in enumerate(np.asarray(bias)):
        ax.plot(distances, row, label=f"head {h}")
    ax.set_xlabel("distance i - j")
    ax.set_ylabel("bias added to the logit")
    ax.set_title(title or "bias vs distance")
    if len(bias) <= 16:
        ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


_MAX_TICKS = 40  # past this many positions the labels of an axis are left off (they would overlap)


def _checked_axes(
    maps: Mapping[str, np.ndarray], tokens: Sequence[str] | None, axes: Mapping[str, AttentionAxes] | None
) -> dict[str, AttentionAxes]:
    """The labels of each map, each checked against the map's shape: a label list of another length (target tokens
    on a cross-attention map's source axis) would put ticks where there are no columns."""
    if axes is None:
        axes = {} if tokens is None else {n: AttentionAxes("self", list(tokens), list(tokens)) for n in maps}
    for name, a in axes.items():
        if name not in maps:
            raise ValueError(f"labels are given for {name!r}, which is not one of the maps ({', '.join(maps)})")
        t_q, t_k = maps[name].shape[-2:]
        if (len(a.queries), len(a.keys)) != (t_q, t_k):
            raise ValueError(f"attention map {name!r} has {t_q} queries x {t_k} keys, but {len(a.queries)} query "
                             f"labels and {len(a.keys)} key labels")
    return dict(axes)


def _label_axes(ax: Any, name: str, a: AttentionAxes | None) -> None:
    """Row label (module, kind) and, on short sequences, a tick label per query (rows) and key (columns)."""
    if a is None:
        ax.set_ylabel(name, fontsize="x-small")
        return
    ax.set_ylabel(f"{name}\n{a.kind}: queries \u2193 keys \u2192", fontsize="x-small")
    if len(a.keys) <= _MAX_TICKS:
        ax.set_xticks(range(len(a.keys)), a.keys, fontsize=5, rotation=90)
    if len(a.queries) <= _MAX_TICKS:
        ax.set_yticks(range(len(a.queries)), a.queries, fontsize=5)


def attention_figure(
    maps: Mapping[str, np.ndarray], *, tokens: Sequence[str] | None = None,
    axes: Mapping[str, AttentionAxes] | None = None, title: str = "",
) -> Any:
    """The figure :func:`plot_attention` saves, returned so that what labels each axis can be read back."""
    names = list(maps)
    if not names:
        raise ValueError("no attention maps to draw")
    labels = _checked_axes(maps, tokens, axes)
    heads = max(maps[n].shape[0] for n in names)
    fig = _figure(2.2 * heads + 1, 2.2 * len(names) + 0.6)
    grid = fig.subplots(len(names), heads, squeeze=False)
    for r, name in enumerate(names):
        for h in range(heads):
            ax = grid[r][h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h < maps[name].shape[0]:
                ax.imshow(maps[name][h], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                ax.set_title(f"head {h}", fontsize="small")
        _label_axes(grid[r][0], name, labels.get(name))
    fig.suptitle(title or "attention weights")
    return fig


def plot_attention(
    maps: Mapping[str, np.ndarray], path: str | pathlib.Path, *, tokens: Sequence[str] | None = None,
    axes: Mapping[str, AttentionAxes] | None = None, title: str = "",
) -> pathlib.Path:
    """A grid of attention maps: one row per attention module, one column per head.

    ``axes`` labels each map's queries and keys (see :func:`posenc.lab.arrays.attention_axes`); ``tokens``, for a
    model with self-attention only, labels both axes of every map. A label list whose length is not the map's
    is a ``ValueError``.
    """
    return _save(attention_figure(maps, tokens=tokens, axes=axes, title=title), path)


def plot_metric_vs_length(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: str | pathlib.Path,
    *,
    metric: str,
    train_range: tuple[int, int] | None = None,
    log_y: bool = False,
    title: str = "",
) -> pathlib.Path:
    """Metric against length, one line per label ``{label: (lengths, mean, spread)}``; the spread (over seeds)
    is a band, the training range is shaded."""
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    if train_range is not None:
        ax.axvspan(train_range[0] - 0.5, train_range[1] + 0.5, color="0.85", label="training lengths")
    for label, (x, mean, spread) in curves.items():
        (line,) = ax.plot(x, mean, marker=".", label=label)
        if np.any(spread > 0):
            ax.fill_between(x, mean - spread, mean + spread, color=line.get_color(), alpha=0.2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("length")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by length")
    ax.legend(fontsize="small")
    return _save(fig, path)
