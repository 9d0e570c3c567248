"""Helpers the benchmark scripts share: the matrix-product peak, resident-set readings, medians, tables.

Everything here measures; nothing asserts. Figures are meant to be read as ratios between systems timed in
the same process, interleaved, because the machine is shared and absolute numbers drift.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "add_process_options",
    "apply_process_options",
    "child_json",
    "current_rss_mib",
    "machine",
    "matmul_peak_gflops",
    "median",
    "peak_rss_mib",
    "process_flags",
    "sync",
    "table",
]


def add_process_options(parser) -> None:
    """``--denormals flush|keep`` and ``--malloc reuse|default``: how the process runs, for every system alike."""
    parser.add_argument("--denormals", choices=["flush", "keep"], default="flush",
                        help="flush (default; what `posenc train` does) or keep denormal floats; see "
                             "posenc.fast.flush_denormals. Set before any work, so torch's worker threads inherit it")
    parser.add_argument("--malloc", choices=["reuse", "default"], default="reuse",
                        help="reuse (default; what `posenc train` does: posenc.fast.reuse_freed_memory, glibc only) "
                             "or default: glibc's own thresholds, under which a step's freed memory is faulted in anew")


def apply_process_options(args) -> None:
    torch.set_flush_denormal(args.denormals == "flush")
    if args.malloc == "reuse":
        from posenc.fast import reuse_freed_memory

        if not reuse_freed_memory():
            print("--malloc reuse: not applied (not glibc); the C library's own allocator runs", file=sys.stderr)


def process_flags(args) -> list[str]:
    """The options of :func:`add_process_options` as command-line flags, for a child process."""
    return ["--denormals", args.denormals, "--malloc", args.malloc]


def sync(device: torch.device | str = "cpu") -> None:
    """Wait for the work queued on ``device`` (a GPU runs asynchronously; the CPU has nothing to wait for)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(dtype: torch.dtype, *, size: int = 2048, repeats: int = 5,
                       device: torch.device | str = "cpu") -> tuple[float, float]:
    """The best GFLOP/s of a square ``size``-by-``size`` matrix product in ``dtype`` on ``device`` over
    ``repeats`` runs, per wall second and per CPU second of this process.

    The best run (not the median) is the peak this machine can reach; model FLOPs utilization divides by it.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, kernel selection
    sync(device)
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        sync(device)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return 2 * size**3 / wall / 1e9, 2 * size**3 / cpu / 1e9


def current_rss_mib() -> float:
    """This process's resident set now, from /proc (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident set so far (``VmHWM`` in /proc/self/status), in MiB.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that across fork and exec, so a child started by a big
    parent would report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_json(script: str, args: Sequence[str], *, timeout: float = 900) -> dict:
    """Run ``script`` in a fresh Python process and parse the JSON object on its last stdout line.

    A fresh process per measurement keeps one system's allocations from hiding in another's peak.
    """
    cmd = [sys.executable, script, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def machine(device: torch.device | str = "cpu") -> str:
    """A one-line description of the machine: CPU model, cores torch uses, torch version (and the GPU, if used)."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f"; {torch.cuda.get_device_name(device)}" if torch.device(device).type == "cuda" else ""
    return f"{model}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), torch {torch.__version__}{gpu}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]], fmt: Callable[[object], str] = str) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dump(obj: object) -> None:
    """Print one JSON line (what ``child_json`` reads back)."""
    print(json.dumps(obj), flush=True)
