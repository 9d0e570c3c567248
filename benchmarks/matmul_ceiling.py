"""How fast could one training step be if everything but its matrix products took no time?

Records every matrix product (``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``) of one training step of a system of
``train_speed.py`` with torch.profiler (shapes, strides and dtypes), replays exactly those products on their own,
and compares in one run:

* the measured step time and its model FLOPs utilization (MFU, ``_systems.model_flops`` over the 2048^3 matrix
  peak of this machine in the step's precision);
* the replayed products alone: their time, the GFLOP/s they reach at the step's shapes, and the MFU a step
  would reach if nothing else cost anything (the *ceiling*).

Each of ``--reps`` rounds measures the 2048^3 peak, a step and the replay back to back; the table gives the
medians, and the MFUs as medians of each round's figure against that round's peak, so that step, products and
peak meet the same conditions of a shared machine.

A ceiling below a target MFU means that no removal of overhead reaches it on this machine; only faster matrix
kernels at these shapes (or larger shapes) would.

    PYTHONPATH=src python benchmarks/matmul_ceiling.py --system posenc+fast --config base --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_process_options, apply_process_options, matmul_peak_gflops  # noqa: E402
from _systems import add_step_options, model_flops, warm_step  # noqa: E402

_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
_DTYPES = {"float": torch.float32, "c10::BFloat16": torch.bfloat16, "c10::Half": torch.float16}


def _record(step, src, tgt) -> list[tuple[str, list, list, list]]:
    """(name, shapes, strides, dtypes) of every matrix product in one step."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(src, tgt)
    calls = []
    for e in prof.events():
        if e.name in _PRODUCTS:
            calls.append((e.name, e.input_shapes, e.structured_input_strides if hasattr(e, "structured_input_strides") else [], e.input_dtypes))
    return calls


def _operand(shape: list[int], stride: list[int] | None, dtype: torch.dtype) -> torch.Tensor:
    if stride and len(stride) == len(shape):
        if 0 in stride:  # a broadcast operand (an expanded mask): draw the distinct entries, then expand
            base = [1 if st == 0 else n for n, st in zip(shape, stride)]
            return torch.randn(base).to(dtype).expand(shape)
        return torch.empty_strided(shape, stride, dtype=dtype).normal_()
    return torch.randn(shape).to(dtype)


def _replay(calls) -> tuple[callable, float]:
    """A function running every recorded product once on fresh operands, and their FLOPs."""
    jobs, flops = [], 0.0
    for name, shapes, strides, dtypes in calls:
        dts = [_DTYPES.get(d, torch.float32) for d in dtypes]
        strides = list(strides) + [None] * (len(shapes) - len(strides))
        if name == "aten::addmm":
            args = [_operand(shapes[i], strides[i], dts[i]) for i in range(3)]
            m, k = shapes[1]
            flops += 2.0 * m * k * shapes[2][1]
            jobs.append(lambda a=args: torch.addmm(*a))
        elif name == "aten::mm":
            args = [_operand(shapes[i], strides[i], dts[i]) for i in range(2)]
            flops += 2.0 * shapes[0][0] * shapes[0][1] * shapes[1][1]
            jobs.append(lambda a=args: torch.mm(*a))
        elif name == "aten::baddbmm":  # the input added to the products may be broadcast, e.g. a (Tq, Tk) mask
            args = [_operand(shapes[i], strides[i], dts[i]) for i in range(3)]
            b, m, k = shapes[1]
            flops += 2.0 * b * m * k * shapes[2][2]
            jobs.append(lambda a=args: torch.baddbmm(*a))
        else:
            args = [_operand(shapes[i], strides[i], dts[i]) for i in range(2)]
            b, m, k = shapes[0]
            flops += 2.0 * b * m * k * shapes[1][2]
            jobs.append(lambda a=args: torch.bmm(*a))

    def run() -> None:
        for job in jobs:
            job()

    return run, flops


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rounds(step, replay, ctx, reps: int, dtype: torch.dtype) -> tuple[list[float], list[float], list[float]]:
    """Seconds of the step and of its products replayed, and the 2048^3 peak (GFLOP/s, best of 3), in each of
    ``reps`` rounds: the three back to back, so that each round's figures meet the same conditions of a shared
    machine (whose matrix units come and go) and the same statistic is taken of each."""
    with ctx:
        replay()  # warm: the operands' pages, the kernels' first-call set-up
    steps, replays, peaks = [], [], []
    for _ in range(reps):
        peaks.append(matmul_peak_gflops(dtype, repeats=3)[0])
        steps.append(_timed(step))
        with ctx:
            replays.append(_timed(replay))
    return steps, replays, peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(ap, system="posenc+fast", config="base", precision="bf16")
    ap.add_argument("--reps", type=int, default=5, help="rounds of step + replay (medians)")
    add_process_options(ap)
    args = ap.parse_args()
    apply_process_options(args)
    step, src, tgt, cfg = warm_step(args)
    calls = _record(step, src, tgt)
    replay, flops = _replay(calls)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    steps, replays, peaks = _rounds(lambda: step(src, tgt), replay, ctx, args.reps, dtype)
    step_s, replay_s = statistics.median(steps), statistics.median(replays)
    model = model_flops(cfg)
    tokens = cfg.batch * cfg.length
    step_mfu = statistics.median(model / s / 1e9 / p for s, p in zip(steps, peaks))
    ceiling = statistics.median(model / r / 1e9 / p for r, p in zip(replays, peaks))
    print(f"{args.system}, {args.config} config, {args.precision}, {torch.get_num_threads()} threads, "
          f"denormals {args.denormals}, malloc {args.malloc}; matrix peak (2048^3) per round "
          f"{', '.join(f'{p:.0f}' for p in peaks)} GFLOP/s")
    print("| | time per step (median) | target tok/s | GFLOP/s of the products "
          "| MFU against each round's peak (median) |")
    print("|---|---|---|---|---|")
    print(f"| training step | {step_s:.3f} s | {tokens / step_s:,.0f} | {flops / step_s / 1e9:.0f} | {step_mfu:.0%} |")
    print(f"| its {len(calls)} matrix products alone | {replay_s:.3f} s | {tokens / replay_s:,.0f} | "
          f"{flops / replay_s / 1e9:.0f} | {ceiling:.0%} (ceiling) |")
    print(f"products: {flops / 1e9:.1f} GFLOP recorded vs {model / 1e9:.1f} GFLOP in the model formula; "
          f"share of the step: {replay_s / step_s:.0%}")


if __name__ == "__main__":
    main()
