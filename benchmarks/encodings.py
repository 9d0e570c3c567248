"""Cost of each positional-encoding family relative to NoPE, on the same language model, in one run.

For every family: the median time of a forward pass (eval, no grad) and of a training step (forward, backward,
AdamW step), each divided by NoPE's. Each family is measured in its own fresh process beside its own NoPE
model, repetitions interleaved (NoPE, family, NoPE, family, ...), so that a slow spell of a shared machine hits
both alike and no family inherits another's allocator state: with all 14 models in one process, whichever
families ran last were 1.2-1.5x slower, whatever they were (``--one-process`` keeps that mode).

    PYTHONPATH=src python benchmarks/encodings.py                  # d=256, 4 heads, 4 layers, T=512, batch 8
    PYTHONPATH=src python benchmarks/encodings.py --reps 7 --length 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_process_options, apply_process_options, child_json, process_flags  # noqa: E402

from posenc.models import LanguageModel, LMConfig  # noqa: E402

FAMILIES = [
    "none",
    "sinusoidal",
    "learned:max_len=4096",
    "rope",
    "rope:layout=half",
    "rope:scaling=yarn,factor=4,original_max_len=128",
    "rope:scaling=dynamic,factor=2,original_max_len=256",
    "xpos",
    "alibi",
    "t5",
    "shaw",
    "kerple",
    "fire",
    "randomized:inner=rope,max_len=4096",
]


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _model(spec: str, args: argparse.Namespace) -> tuple[LanguageModel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads, num_layers=args.layers,
                   dim_feedforward=4 * args.d_model, dropout=0.0, encoding=spec)
    model = LanguageModel(cfg)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def _measure(families: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median forward and training-step seconds of each family, repetitions interleaved in this process."""
    ids = torch.randint(0, args.vocab, (args.batch, args.length))
    models = {f: _model(f, args) for f in families}

    def forward(f: str) -> None:
        model = models[f][0].eval()
        with torch.no_grad():
            model(ids)

    def train_step(f: str) -> None:
        model, opt = models[f]
        model.train()
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for f in families:  # warm-up: tables, caches, allocator
        forward(f)
        train_step(f)
    times: dict[str, dict[str, list[float]]] = {f: {"fwd": [], "train": []} for f in families}
    for _ in range(args.reps):
        for f in families:
            times[f]["fwd"].append(_timed(lambda: forward(f)))
            times[f]["train"].append(_timed(lambda: train_step(f)))
    return {f: {k: statistics.median(v) for k, v in t.items()} for f, t in times.items()}


def _pair_in_child(family: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    flags = ["--pair", family, "--reps", str(args.reps), "--threads", str(args.threads), *process_flags(args)]
    for name in ("d_model", "heads", "layers", "length", "batch", "vocab"):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return child_json(__file__, flags, timeout=3600)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="*", default=FAMILIES)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--one-process", action="store_true", help="all families in this process, interleaved")
    p.add_argument("--pair", help=argparse.SUPPRESS)  # child mode: NoPE and this one family
    add_process_options(p)
    args = p.parse_args()
    apply_process_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pair:
        print(json.dumps(_measure(list(dict.fromkeys(["none", args.pair])), args)))
        return
    families = [f for f in dict.fromkeys(args.families) if f != "none"]
    if args.one_process:
        med = _measure(["none", *families], args)
        pairs = {f: {"none": med["none"], f: med[f]} for f in families}
    else:
        pairs = {f: _pair_in_child(f, args) for f in families}
    print(f"LanguageModel d={args.d_model}, {args.heads} heads, {args.layers} layers, T={args.length}, "
          f"batch {args.batch}, {args.reps} interleaved reps, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"denormals {args.denormals}, malloc {args.malloc}, "
          f"{'one process' if args.one_process else 'one process per family'}")
    print("| encoding | NoPE forward ms | forward ms | forward / NoPE | NoPE train step ms | train step ms | train / NoPE |")
    print("|---|---|---|---|---|---|---|")
    for f in families:
        base, m = pairs[f]["none"], pairs[f][f]
        print(f"| `{f}` | {1000 * base['fwd']:.0f} | {1000 * m['fwd']:.0f} | {m['fwd'] / base['fwd']:.2f} | "
              f"{1000 * base['train']:.0f} | {1000 * m['train']:.0f} | {m['train'] / base['train']:.2f} |")


if __name__ == "__main__":
    main()
