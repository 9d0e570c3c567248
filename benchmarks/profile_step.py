"""Where a training step's time goes: torch.profiler's operator table for one system of train_speed.py.

    PYTHONPATH=src python benchmarks/profile_step.py --system posenc --config small --precision fp32
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _systems import add_step_options, warm_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(ap, system="posenc", config="small", precision="fp32")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    step, src, tgt, _ = warm_step(args)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(src, tgt)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
