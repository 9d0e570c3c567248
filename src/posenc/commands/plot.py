"""``posenc plot KIND``: PNG pictures of an encoding, or of a trained checkpoint's attention.

Kinds: ``matrix`` (positions x dimensions), ``similarity`` (dot products of positions), ``wavelength`` (RoPE's
wavelength per pair against a context length), ``bias`` (bias vs distance per head), ``attention`` (the attention
maps of a run directory's model on an input text). The numbers come from ``posenc.lab.arrays``.
"""

from __future__ import annotations

import argparse
import pathlib


def _model_args(p: argparse.ArgumentParser, *, encoding: str) -> None:
    p.add_argument("--encoding", "-e", default=encoding, help=f"encoding name or spec (default {encoding})")
    p.add_argument("--d-model", type=int, default=64, help="model width (default 64)")
    p.add_argument("--heads", type=int, default=1, help="attention heads (default 1)")


def _out(args: argparse.Namespace, default: str) -> pathlib.Path:
    return pathlib.Path(args.out or default)


def _safe(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def run(args: argparse.Namespace) -> int:
    from ..lab import arrays, plots

    kind = args.kind
    if kind in ("matrix", "similarity"):
        m = arrays.encoding_matrix(args.encoding, length=args.length, d_model=args.d_model, num_heads=args.heads)
        if kind == "matrix":
            path = plots.plot_matrix(m, _out(args, f"matrix-{_safe(args.encoding)}.png"), title=f"{args.encoding}")
        else:
            s = arrays.position_similarity(m)
            path = plots.plot_similarity(s, _out(args, f"similarity-{_safe(args.encoding)}.png"), title=args.encoding)
    elif kind == "wavelength":
        if args.context < 1:
            raise ValueError(f"--context must be >= 1, got {args.context}")
        curves = {
            f"base={args.base:g}, factor={f:g}": arrays.rope_wavelengths(args.head_dim, base=args.base, factor=f)
            for f in args.factor
        }
        path = plots.plot_wavelengths(curves, _out(args, "wavelength.png"), context=args.context)
    elif kind == "bias":
        d, b = arrays.bias_by_distance(
            args.encoding, num_heads=args.heads, max_distance=args.max_distance, causal=not args.bidirectional
        )
        path = plots.plot_bias(d, b, _out(args, f"bias-{_safe(args.encoding)}.png"), title=args.encoding)
    else:
        path = _attention(args)
    print(f"wrote {path}")
    return 0


def _attention(args: argparse.Namespace) -> pathlib.Path:
    from ..lab import arrays, plots
    from ..lab.runs import encode_input, load_run

    model, config = load_run(args.run_dir)  # an unfinished run is refused, naming the step it reached
    picture = encode_input(config, args.input)
    maps = arrays.attention_maps(model, *picture.inputs)
    axes = arrays.attention_axes(model, maps, labels=picture.labels, source_labels=picture.source_labels)
    title = f"{args.run_dir}: {args.input!r}"
    return plots.plot_attention(maps, _out(args, "attention.png"), axes=axes, title=title)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw an encoding or a checkpoint's attention as a PNG")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    m = kinds.add_parser("matrix", help="an encoding's matrix: positions x dimensions")
    s = kinds.add_parser("similarity", help="dot products of the encodings of every pair of positions")
    for q in (m, s):
        _model_args(q, encoding="sinusoidal")
        q.add_argument("--length", type=int, default=128, help="positions (default 128)")
    w = kinds.add_parser("wavelength", help="RoPE's wavelength per rotary pair against a context length")
    w.add_argument("--head-dim", type=int, default=64, help="rotary head width (default 64)")
    w.add_argument("--base", type=float, default=10000.0, help="RoPE base (default 10000)")
    w.add_argument("--factor", type=float, nargs="+", default=[1.0], help="interpolation factors (default 1)")
    w.add_argument("--context", type=int, default=2048, help="context length drawn as a line (default 2048)")
    b = kinds.add_parser("bias", help="the logits bias against distance, per head")
    _model_args(b, encoding="alibi")
    b.set_defaults(heads=8)
    b.add_argument("--max-distance", type=int, default=64, help="largest distance (default 64)")
    b.add_argument("--bidirectional", action="store_true", help="the encoder form: distances on both sides")
    a = kinds.add_parser("attention", help="attention maps of a trained run on an input")
    a.add_argument("run_dir", help="a run directory (e.g. OUT/runs/none-seed0 of posenc compare)")
    a.add_argument("--input", "-i", required=True,
                   help="a task's input as symbol ids separated by spaces ('3 1 4 1 5'), or raw text for an lm run")
    for q in (m, s, w, b, a):
        q.add_argument("--out", "-o", default=None, help="PNG path to write")
    p.set_defaults(func=run)
