"""``posenc eval RUN_DIR``: re-evaluate a run's newest valid checkpoint (or a given one), optionally at other
task lengths."""

from __future__ import annotations

import argparse
import json
import sys


def run(args: argparse.Namespace) -> int:
    from ..train.checkpoint import read_state
    from ..train.drift import data_differences
    from ..train.loop import evaluate_sets, format_results
    from ..train.run import build_dataset, latest_valid, load_run, resolve_device

    device = resolve_device(args.device)
    model, tokenizer, cfg = load_run(args.run_dir, checkpoint=args.checkpoint, device=device)
    chosen = None if args.checkpoint is None else (args.checkpoint, read_state(args.checkpoint))
    if chosen is not None:  # another run's checkpoint may share the model, not the data it was trained on
        diffs = data_differences(chosen[1], cfg)
        if diffs:
            print(f"posenc: note: checkpoint {args.checkpoint} was trained on other data than {args.run_dir} "
                  f"({'; '.join(diffs)}); it is evaluated on {args.run_dir}'s", file=sys.stderr)
    for flag, given in (("--lengths", args.lengths), ("--examples", args.examples)):
        if given and cfg.data.kind != "task":
            raise ValueError(f"{flag} applies to built-in tasks; this run trained on data.kind {cfg.data.kind!r}")
    if args.lengths:
        from .compare import parse_lengths

        try:  # the same lengths and ranges as `posenc compare --test-lengths`, comma-separated
            cfg.eval.lengths = parse_lengths([n.strip() for n in args.lengths.split(",") if n.strip()])
        except ValueError as err:
            raise ValueError(f"--lengths {args.lengths!r}: {err}") from None
        if not cfg.eval.lengths:
            raise ValueError(f"--lengths names no length: {args.lengths!r}")
    if args.examples:
        if args.examples < 0:
            raise ValueError(f"--examples must be >= 1, got {args.examples}")
        cfg.eval.examples = args.examples
    dataset = build_dataset(cfg, tokenizer=tokenizer)
    precision = args.precision or cfg.train.precision
    evals = evaluate_sets(model, dataset, device=device, precision=precision)
    found = latest_valid(args.run_dir) if chosen is None else chosen
    step = found[1]["step"] if found else "?"
    print(f"{args.run_dir}: checkpoint step {step}, {precision}")
    print(format_results(evals))
    if args.output:
        doc = {n: {**r.row(), "exact_match_per_length": {str(k): v[1] / v[0] for k, v in r.per_length.items()}}
               for n, r in evals.items()}
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"run_dir": str(args.run_dir), "step": step, "evals": doc}, f, indent=1)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run directory's checkpoint, optionally at other lengths")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--lengths", help="task lengths to evaluate, comma-separated, ranges allowed (e.g. 8,16,32-34)")
    p.add_argument("--examples", type=int, default=0, help="examples per evaluation set (default: the run's)")
    p.add_argument("--checkpoint", help="a checkpoint directory (default: the newest valid one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="default: the run's")
    p.add_argument("--output", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=run)
