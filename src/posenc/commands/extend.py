"""``posenc extend RUN_DIR``: evaluate a RoPE run past its training length under each context-extension scaling
(none, linear, ntk, dynamic, yarn, llama3) with the chosen factors, optionally after a short fine-tune."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..lab.extend import ExtendConfig, check_factors, extend
    from ..lab.runs import load_run
    from .compare import parse_lengths, set_threads

    set_threads(args.threads)
    check_factors(args.factors)  # the default lengths below are computed from them
    if args.lengths:
        lengths = parse_lengths(args.lengths)
    else:
        _, cfg = load_run(args.run_dir)
        top = int(cfg.train_max * max(args.factors))
        lengths = [cfg.train_max, 2 * cfg.train_max, top] if cfg.task == "lm" else list(range(1, top + 1))
        lengths = sorted(set(lengths))
    config = ExtendConfig(
        run_dir=args.run_dir, lengths=lengths, scalings=args.scalings, factors=args.factors,
        finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
    )
    print(extend(config, args.out))
    print(f"wrote {args.out}/results.csv, results.md and the plot")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..lab.extend import SCALINGS

    p = sub.add_parser("extend", help="evaluate a RoPE run at longer contexts under each scaling")
    p.add_argument("run_dir", help="a RoPE run directory (e.g. OUT/runs/rope-seed0 of posenc compare)")
    p.add_argument("--scalings", nargs="+", default=list(SCALINGS), help=f"(default: {' '.join(SCALINGS)})")
    p.add_argument("--factors", type=float, nargs="+", default=[2.0], help="extension factors s (default 2)")
    p.add_argument("--lengths", nargs="+", default=None,
                   help="test lengths or ranges (default: up to s x the training length)")
    p.add_argument("--finetune-steps", type=int, default=0, help="also fine-tune each scaling this many steps at s x L")
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tune learning rate (default: the run's / 10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 = torch's default)")
    p.add_argument("--out", "-o", default="extend-out", help="results directory (default extend-out)")
    p.set_defaults(func=run)
