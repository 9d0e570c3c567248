"""``posenc train``: train (or resume) a run from a config file and command-line overrides.

With no arguments it runs the built-in job: the copy task, decoder-only, NoPE, fp32, a few minutes on 2 CPU
cores, then prints exact match within and beyond the training lengths.
"""

from __future__ import annotations

import argparse
import os


def run(args: argparse.Namespace) -> int:
    from ..train.config import RunConfig, apply_overrides, load_config_file, to_toml
    from ..train.loop import format_results, train

    cfg = load_config_file(args.config) if args.config else RunConfig()
    cfg = apply_overrides(cfg, args)
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for the job
        print(f"step {result.step}; run directory {result.run_dir}")
        print(format_results(result.evals))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..train.config import add_override_arguments

    p = sub.add_parser(
        "train", help="train a model on a built-in task, a text file or a parallel corpus",
        description="Train a model. Settings come from the defaults, then --config FILE (TOML or JSON), then the "
                    "--section.field options below. A run directory that holds checkpoints is resumed (--resume auto).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="a TOML or JSON config file (sections model, data, optim, train, eval)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    add_override_arguments(p)
    p.set_defaults(func=run)
