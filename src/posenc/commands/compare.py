"""``posenc compare``: which encoding still works beyond its training lengths? Train each encoding x seed on
one task with the same model, budget and data; measure each at every test length; write a table and a plot.

The defaults are a small-scale Kazemnejad et al. (2023) setup: decoder-only, their copy variant that repeats one
symbol (``rsc``), train lengths 1-20, test lengths 1-40. ``--task lm --text FILE`` measures perplexity by
evaluation context instead (Press et al. 2022); ``--arch seq2seq`` uses an encoder-decoder (a bidirectional
encoder, Haviv et al. 2022).
"""

from __future__ import annotations

import argparse


def parse_lengths(items: list[str]) -> list[int]:
    """``["1-40"]`` -> 1..40; ``["64", "128"]`` -> [64, 128]; ranges and values mix."""
    out: list[int] = []
    for item in items:
        lo, dash, hi = item.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
        except ValueError:
            raise ValueError(f"a length must be an integer or a range like 21-40, got {item!r}") from None
    return sorted(set(out))


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of one run (shared with ``posenc extend``'s fine-tune)."""
    from ..lab.runs import RunConfig

    d = RunConfig()
    m = p.add_argument_group("model")
    m.add_argument("--arch", choices=("decoder", "seq2seq"), default=d.arch, help=f"(default {d.arch})")
    m.add_argument("--d-model", type=int, default=d.d_model, help=f"(default {d.d_model})")
    m.add_argument("--heads", type=int, default=d.num_heads, help=f"(default {d.num_heads})")
    m.add_argument("--layers", type=int, default=d.num_layers, help=f"layers per stack (default {d.num_layers})")
    m.add_argument("--ff", type=int, default=d.dim_feedforward,
                   help=f"feed-forward width (default {d.dim_feedforward})")
    m.add_argument("--dropout", type=float, default=d.dropout, help=f"(default {d.dropout})")
    b = p.add_argument_group("budget")
    b.add_argument("--steps", type=int, default=d.steps, help=f"training steps per run (default {d.steps})")
    b.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    b.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    b.add_argument("--warmup", type=int, default=d.warmup, help=f"warm-up steps (default {d.warmup})")
    b.add_argument("--eval-examples", type=int, default=d.eval_examples,
                   help=f"test examples per length (default {d.eval_examples})")
    b.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: tiny models gain little from more, and lose much when cores are "
                        "shared)")
    b.add_argument("--eval-tokens", type=int, default=d.eval_tokens,
                   help=f"lm: validation characters per length (default {d.eval_tokens})")


def run_config(args: argparse.Namespace, **overrides: object):  # -> RunConfig
    from ..lab.runs import RunConfig

    lm = args.task == "lm"
    lo, hi = args.train_lengths if args.train_lengths else ((128, 128) if lm else (1, 20))
    if lm and lo != hi:
        raise ValueError(f"--task lm trains on windows of one context length: give --train-lengths N N, got {lo} {hi}")
    return RunConfig(
        task=args.task, text=args.text, arch=args.arch, train_min=lo, train_max=hi, d_model=args.d_model,
        num_heads=args.heads, num_layers=args.layers, dim_feedforward=args.ff, dropout=args.dropout,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        eval_examples=args.eval_examples, eval_tokens=args.eval_tokens, **overrides,
    )


def set_threads(n: int) -> None:
    """Denormals flushed and freed memory kept for reuse first (as ``posenc train`` does; see posenc.fast), then
    ``n`` threads."""
    import torch

    from ..fast import flush_denormals, reuse_freed_memory

    if n < 0:
        raise ValueError(f"--threads must be >= 0 (0 = torch's default), got {n}")
    flush_denormals()
    reuse_freed_memory()
    if n:
        torch.set_num_threads(n)


def run(args: argparse.Namespace) -> int:
    from ..lab.compare import CompareConfig, compare

    set_threads(args.threads)

    base = run_config(args)
    if args.test_lengths:
        lengths = parse_lengths(args.test_lengths)
    elif base.task == "lm":
        lengths = [base.train_max // 2, base.train_max, 2 * base.train_max, 4 * base.train_max]
    else:
        lengths = list(range(1, 2 * base.train_max + 1))
    config = CompareConfig(base=base, encodings=args.encodings, seeds=args.seeds, test_lengths=lengths)
    out = compare(config, args.out, progress=not args.no_progress)
    print(out.markdown)
    print(f"wrote {out.csv}, {out.table}, {out.plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..lab.compare import DEFAULT_ENCODINGS

    p = sub.add_parser("compare", help="train each encoding on one task and measure it at every test length")
    p.add_argument("--encodings", "-e", nargs="+", default=list(DEFAULT_ENCODINGS),
                   help=f"names or specs (default: {' '.join(DEFAULT_ENCODINGS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default 0 1)")
    p.add_argument("--task", choices=("copy", "reverse", "repeat", "lm"), default="repeat", help="(default repeat)")
    p.add_argument("--text", default=None, help="text file of --task lm (character level)")
    p.add_argument("--train-lengths", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="training lengths (default 1 20; lm: the context, 128 128)")
    p.add_argument("--test-lengths", nargs="+", default=None,
                   help="lengths or ranges, e.g. 1-40 (default 1..2*MAX; lm: MAX/2 MAX 2MAX 4MAX)")
    add_run_arguments(p)
    p.add_argument("--out", "-o", default="compare-out", help="results directory (default compare-out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per run instead)")
    p.set_defaults(func=run)
