"""How a decoder-only posenc LanguageModel's training-step time and memory grow with the sequence length T.

For each T (one sequence of T tokens per step) a fresh subprocess builds the model, trains ``--steps`` steps
(forward, backward, Adam) and reports the median step time and its training memory: the peak resident set
(``VmHWM``) minus the resident set just before the first step. Through the fused attention
path (pure causal mask, no bias: SDPA gets ``is_causal=True`` and no mask) memory grows linearly in T; the
plain math path (``--path math``, which materializes the (H, T, T) scores) shows the quadratic curve it
avoids. Attention dropout is 0 by default: on CPU, SDPA cannot apply dropout in its fused kernel and falls
back to a math path, which is quadratic again.

    PYTHONPATH=src python benchmarks/memory_scaling.py --lengths 128 256 512 1024 2048 4096
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    add_process_options, apply_process_options, child_json, current_rss_mib, dump, machine, median, peak_rss_mib,
    process_flags, table,
)


def child(args: argparse.Namespace) -> None:
    """In a fresh process: train a few steps at length ``args.child`` and print time and memory."""
    from posenc.attention import MultiHeadAttention
    from posenc.models import LanguageModel, LMConfig

    torch.manual_seed(0)
    length, vocab = args.child, 1000
    lm = LanguageModel(LMConfig(
        vocab_size=vocab, d_model=args.d_model, num_heads=args.heads, num_layers=args.layers,
        dim_feedforward=4 * args.d_model, dropout=args.dropout, encoding="sinusoidal",
    )).train()
    for m in lm.modules():
        if isinstance(m, MultiHeadAttention):
            m.use_math = args.path == "math"
    opt = torch.optim.Adam(lm.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (1, length + 1))
    before = current_rss_mib()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(lm(ids[:, :-1])[0], ids[0, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    dump({"step_s": median(times[1:] or times), "train_mib": peak_rss_mib() - before, "peak_mib": peak_rss_mib()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--path", choices=["fused", "math"], default="fused")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    add_process_options(ap)
    args = ap.parse_args()
    apply_process_options(args)  # in every child, as posenc train sets its process up
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    print(f"machine: {machine()}; denormals {args.denormals}, malloc {args.malloc}")
    rows, base = [], None
    for length in args.lengths:
        flags = ["--child", str(length), "--path", args.path, "--d-model", str(args.d_model), "--heads", str(args.heads),
                 "--layers", str(args.layers), "--dropout", str(args.dropout), "--steps", str(args.steps),
                 "--threads", str(args.threads), *process_flags(args)]
        r = child_json(__file__, flags)
        base = base or (length, r)
        rows.append([
            length, f"{r['step_s']:.3f}", f"{r['step_s'] / base[1]['step_s'] * base[0] / length:.2f}",
            f"{r['train_mib']:,.0f}", f"{r['train_mib'] / length * 1024:,.0f}", f"{r['peak_mib']:,.0f}",
        ])
        print(f"  T={length}: {r}", file=sys.stderr)
    print(table(["T", "step s", "time/T (rel. to first)", "training MiB", "MiB per 1024 tokens", "peak RSS MiB"], rows))


if __name__ == "__main__":
    main()
