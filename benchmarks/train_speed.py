"""Training speed and peak memory of posenc's encoder-decoder against torch.nn.Transformer and x-transformers.

Timing: every system is built in this one process and trained on the same batch; rounds interleave the
systems (the order rotates each round) and each round times ``--steps`` full steps (forward, backward, Adam)
after ``--warmup`` untimed ones. Reported: the median target tokens/s over rounds, posenc's ratio to the
faster peer (median of the per-round ratios), and model FLOPs utilization (MFU) against the fp32 / bf16 matrix
product peak measured in the same run: against the best 2048^3 product before and after all rounds, and against
the one measured at the start of each round (median over rounds). On a machine whose cores are shared with other
work the two differ: the best reading catches a moment when nothing else used the cores' matrix units, the
round's reading the conditions the steps of that round ran under.

Memory (``--memory``): each system runs in a fresh subprocess (so one system's allocations cannot hide in
another's) for a few steps; reported are the peak resident set of that process (``VmHWM``)
and the training part of it: the peak minus the resident set just before the first step (after imports, the
model and the optimizer were built).

On a GPU (``--device cuda``) the steps are timed up to a synchronization, the matrix peak is that of an 8192^3
product, and memory is the peak of torch's CUDA allocator (``torch.cuda.max_memory_allocated``) in each fresh
process; the CPU-second columns then say little. (Written for the GPU table of benchmarks/README.md; it has not
yet run on a GPU.)

    PYTHONPATH=src python benchmarks/train_speed.py --config small base --precision fp32 bf16 --memory
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    add_process_options, apply_process_options, child_json, current_rss_mib, dump, machine, matmul_peak_gflops, median,
    peak_rss_mib, process_flags, sync, table,
)
from _systems import CONFIGS, batch, make_step, model_flops, parameters  # noqa: E402

PEERS = ("torch", "xtransformers", "xtransformers+flash")


def time_systems(
    cfg_name: str, precision: str, systems: list[str], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Target tokens per wall second and per CPU second (this process's) of each system per round, interleaved,
    and the matrix peak (GFLOP/s per wall second, best of 3) measured at the start of each round.

    On a machine shared with other work, wall time includes time the scheduler gave to others; CPU time
    does not (with one torch thread it is the work done; with more it also counts threads spinning).
    """
    cfg = CONFIGS[cfg_name]
    src, tgt = batch(cfg, device=args.device)
    steps = {}
    for s in systems:
        step, model = make_step(s, cfg, precision, args.adam, args.device)
        steps[s] = step
        print(f"  {cfg_name}/{precision} {s}: {parameters(model):,} parameters", file=sys.stderr)
        for _ in range(args.warmup):
            step(src, tgt)
    tokens = cfg.batch * cfg.length
    wall: dict[str, list[float]] = {s: [] for s in systems}
    cpu: dict[str, list[float]] = {s: [] for s in systems}
    round_peaks: list[float] = []
    for r in range(args.rounds):
        round_peaks.append(peak_gflops(precision, args.device, repeats=3)[0])
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        for s in order:
            sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                steps[s](src, tgt)
            sync(args.device)
            wall[s].append(args.steps * tokens / (time.perf_counter() - t0))
            cpu[s].append(args.steps * tokens / (time.process_time() - c0))
    return wall, cpu, round_peaks


def memory_of(cfg_name: str, precision: str, system: str, args: argparse.Namespace) -> dict:
    """Peak resident set of ``system`` training in a fresh process (see ``--child``)."""
    return child_json(__file__, [
        "--child", system, "--config", cfg_name, "--precision", precision, "--adam", args.adam,
        "--threads", str(args.threads), "--device", args.device, *process_flags(args),
    ])


def child(args: argparse.Namespace) -> None:
    """Run in a fresh process: build one system, train a few steps, print its resident-set figures."""
    cfg = CONFIGS[args.config[0]]
    src, tgt = batch(cfg, device=args.device)
    step, _ = make_step(args.child, cfg, args.precision[0], args.adam, args.device)
    if torch.device(args.device).type == "cuda":  # torch's CUDA allocator: the peak of its allocated bytes
        sync(args.device)
        before = torch.cuda.memory_allocated(args.device) / 2**20
        torch.cuda.reset_peak_memory_stats(args.device)
        for _ in range(3):
            step(src, tgt)
        sync(args.device)
        peak = torch.cuda.max_memory_allocated(args.device) / 2**20
        dump({"peak_mib": peak, "before_mib": before, "train_mib": peak - before})
        return
    before = current_rss_mib()
    for _ in range(3):
        step(src, tgt)
    dump({"peak_mib": peak_rss_mib(), "before_mib": before, "train_mib": peak_rss_mib() - before})


def round_ratios(rates: dict[str, list[float]], system: str) -> list[float]:
    """``system``'s rate over the fastest peer's rate in the same round, for every round ([] for a peer)."""
    peers = [p for p in PEERS if p in rates]
    if system in PEERS or not peers:
        return []
    return [rates[system][i] / max(rates[p][i] for p in peers) for i in range(len(rates[system]))]


def ratio_to_peers(rates: dict[str, list[float]], system: str) -> str:
    """Median over rounds of ``system``'s rate over the faster peer's rate in the same round."""
    ratios = round_ratios(rates, system)
    return f"{median(ratios):.2f}x" if ratios else "—"


def peak_size(device: str) -> int:
    return 2048 if torch.device(device).type == "cpu" else 8192


def peak_gflops(precision: str, device: str, repeats: int = 5) -> tuple[float, float]:
    """The matrix peak in ``precision`` on ``device``: a 2048^3 product on the CPU, 8192^3 on a GPU (where a
    2048^3 product is over too soon to time)."""
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    size = peak_size(device)
    return matmul_peak_gflops(dtype, size=size, repeats=repeats, device=device)


def measure_peaks(device: str) -> dict[str, tuple[float, float]]:
    return {"fp32": peak_gflops("fp32", device), "bf16": peak_gflops("bf16", device)}


def memory_columns(device: str) -> tuple[str, str]:
    if torch.device(device).type == "cuda":
        return "peak CUDA allocated MiB", "training CUDA allocated MiB"
    return "peak RSS MiB", "training RSS MiB"


def report(args: argparse.Namespace) -> None:
    """Time every config and precision, then print the table. The matrix peak is measured before and after the
    runs and the higher of the two is used: on a shared machine a single reading may catch a busy moment."""
    systems = list(args.systems)
    first = measure_peaks(args.device)
    print(f"machine: {machine(args.device)}; denormals {args.denormals}, malloc {args.malloc}")
    results = []
    for cfg_name in args.config:
        for precision in args.precision:
            wall, cpu, round_peaks = time_systems(cfg_name, precision, systems, args)
            print(f"  {cfg_name}/{precision} round peaks GFLOP/s {[round(x) for x in round_peaks]}", file=sys.stderr)
            for s in systems:
                mem = memory_of(cfg_name, precision, s, args) if args.memory else None
                results.append((cfg_name, precision, s, wall, cpu, round_peaks, mem))
                print(f"  {cfg_name}/{precision} {s}: wall {[round(x) for x in wall[s]]} cpu {[round(x) for x in cpu[s]]}",
                      file=sys.stderr)
                if ratios := sorted(round_ratios(wall, s)):  # the spread behind the median the table gives
                    print(f"  {cfg_name}/{precision} {s} over the round's fastest peer (wall), sorted: "
                          f"{', '.join(f'{r:.2f}' for r in ratios)}", file=sys.stderr)
    second = measure_peaks(args.device)
    peaks = {k: (max(first[k][0], second[k][0]), max(first[k][1], second[k][1])) for k in first}
    print(f"matmul peak ({peak_size(args.device)}^3, best of 5, before and after), "
          "GFLOP/s per wall second | per CPU second: " + ", ".join(
        f"{k} {w:.0f} | {c:.0f}" for k, (w, c) in peaks.items()))
    header = [
        "config", "precision", "system", "target tok/s (wall)", "ratio (wall)", "tok/CPU-s", "ratio (CPU)",
        "MFU (wall)", "MFU (CPU)", "MFU (round peak)", *memory_columns(args.device),
    ]
    rows = []
    for cfg_name, precision, s, wall, cpu, round_peaks, mem in results:
        per_token = model_flops(CONFIGS[cfg_name]) / (CONFIGS[cfg_name].batch * CONFIGS[cfg_name].length)
        mfu = median(wall[s]) * per_token / (peaks[precision][0] * 1e9)
        mfu_cpu = median(cpu[s]) * per_token / (peaks[precision][1] * 1e9)
        mfu_round = median([rate * per_token / (peak * 1e9) for rate, peak in zip(wall[s], round_peaks)])
        rows.append([
            cfg_name, precision, s, f"{median(wall[s]):,.0f}", ratio_to_peers(wall, s), f"{median(cpu[s]):,.0f}",
            ratio_to_peers(cpu, s), f"{100 * mfu:.0f}%", f"{100 * mfu_cpu:.0f}%", f"{100 * mfu_round:.0f}%",
            "—" if mem is None else f"{mem['peak_mib']:,.0f}", "—" if mem is None else f"{mem['train_mib']:,.0f}",
        ])
    print(table(header, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", choices=sorted(CONFIGS), default=["small"])
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--systems", nargs="+", default=["posenc", "torch", "xtransformers"],
                    help="posenc, posenc+compile (torch.compile of the posenc model), torch, xtransformers")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per system per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--adam", choices=["fused", "foreach", "loop"], default="fused", help="the same for every system")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory, one fresh process per system")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    add_process_options(ap)
    args = ap.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here")
    apply_process_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
