"""The opt-in fast path: switch a posenc model to cheaper kernels that compute the same function.

    model = posenc.fast.use_fast_path(Seq2Seq(config))   # in place; returns the model

What it changes, and why (each measured by ``benchmarks/train_speed.py`` and checked against the plain path
in the tests):

* every ``torch.nn.Dropout`` becomes :class:`posenc.dropout.FastDropout` (a quarter of the random draws of
  ``bernoulli_``; on CPU the dropout masks of a small Transformer cost about as much as its matrix products);
* attention drops its weights with the same kernel (on CPU, SDPA with dropout runs a math path anyway), and
  when the encoding adds nothing inside attention that path runs as one packed autograd node
  (:mod:`posenc.packed_attention`: one copy into head-major layout each way instead of one per tensor);
* a ReLU feed-forward block runs as one node (:mod:`posenc.fused_feedforward`): ReLU and mask in one pass, the
  dropout scale inside the second product, and one hidden tensor kept for the backward instead of three.

Without dropout (evaluation, ``p = 0``) the fast path computes exactly what the plain path computes. The plain
modules stay the default so that the readable code is the code that runs unless asked otherwise.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from typing import TypeVar

import torch
from torch import nn

from .attention import MultiHeadAttention
from .dropout import FastDropout
from .layers import FeedForward

__all__ = ["flush_denormals", "reuse_freed_memory", "use_fast_path"]

M = TypeVar("M", bound=nn.Module)


def use_fast_path(model: M, enabled: bool = True) -> M:
    """Switch ``model`` (in place) to the fast path, or back to the plain one with ``enabled=False``.

    An ``nn.Dropout(inplace=True)`` is left as it is (the fast dropout writes a new tensor). A dropout module
    changes class in place (``FastDropout`` adds no state), so its hooks stay on it both ways; a feed-forward block
    whose dropout has hooks keeps the modules' own path, so they keep firing."""
    for module in list(model.modules()):
        if isinstance(module, (MultiHeadAttention, FeedForward)):
            module.fast_dropout = enabled
        for child in module.children():
            if enabled and type(child) is nn.Dropout and not child.inplace:
                child.__class__ = FastDropout
            elif not enabled and type(child) is FastDropout:
                child.__class__ = nn.Dropout
    return model


def flush_denormals(enabled: bool = True) -> bool:
    """Treat denormal floats as zero on this CPU (flush-to-zero, denormals-are-zero); True if supported.

    Why: with an additive bias (ALiBi, T5, Kerple, FIRE) many attention logits lie far below their row's
    maximum, and ``exp`` of a difference below about -87 is a *denormal* fp32 number, which x86 cores process
    up to ~100 times slower. Measured on SDPA's fused CPU kernel (B=8, H=4, T=512, Dh=64, forward + backward,
    2 threads): with an ALiBi mask 142 ms against 88 ms for ``is_causal``; with denormals flushed 80 ms against
    76 ms. The results change by less than the smallest normal float (~1e-38), i.e. not at all at fp32 precision.

    The mode is per thread, and worker threads copy it from the thread that creates them: call this at the
    start of a program, before the first parallel operation starts torch's thread pool (``posenc train`` does,
    unless ``train.flush_denormal = false``).
    """
    return bool(torch.set_flush_denormal(enabled))


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_INT_MAX = 2**31 - 1


def reuse_freed_memory(*, mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc's malloc keep freed memory for the next allocation instead of handing it back to the OS; True if
    applied (Linux with glibc), False elsewhere, where nothing changes.

    A training step allocates and frees the same large tensors at every step. glibc serves a block above its mmap
    threshold with a fresh mapping and unmaps it when freed, and gives the top of its heap back to the OS beyond
    its trim threshold; both thresholds adapt to what the program frees, yet a Transformer step still gets much
    of its memory as new pages every time, and each 4 KiB page faults when first written (the kernel maps and
    zeroes it: ~1.7 us a page on this project's CPU). Measured on the base config of ``benchmarks/train_speed.py``
    (d=512, 6+6 layers, bf16, 2 threads): 110-150 k page faults and 0.4-0.5 s of system time per step by default;
    with blocks up to ``mmap_threshold`` taken from the heap and up to ``trim_threshold`` of free heap kept,
    under 2.5 k faults and ~0.03 s, the resident set unchanged (2.27 GiB either way: a training loop's memory
    returns to its peak at every step anyway). What frees memory for the rest of the machine is the end of the
    process, not a step's end.

    The setting is process-wide (like :func:`flush_denormals`), fixed from the call on (glibc's adaptive
    thresholds are off from then), and cannot be undone; call it once, first thing. ``posenc train`` does
    (``train.reuse_memory``), as do ``posenc compare`` and ``posenc extend``. The same effect without code: the
    environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``, or a caching allocator such as
    jemalloc or tcmalloc preloaded (with one of those, this call may report True and change nothing).
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _INT_MAX:
            raise ValueError(f"{name} must be a whole number of bytes in (0, 2^31 - 1], got {value!r}")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
