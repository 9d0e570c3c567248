"""The opt-in fast path: switch a posenc model to cheaper kernels that compute the same function.

    model = posenc.fast.use_fast_path(Seq2Seq(config))   # in place; returns the model

What it changes, and why (each measured by ``benchmarks/train_speed.py`` and checked against the plain path
in the tests):

* every ``torch.nn.Dropout`` becomes :class:`posenc.dropout.FastDropout` (a quarter of the random draws of
  ``bernoulli_``; on CPU the dropout masks of a small Transformer cost about as much as its matrix products);
* attention drops its weights with the same kernel (on CPU, SDPA with dropout runs a math path anyway), and
  when the encoding adds nothing inside attention that path runs as one packed autograd node
  (:mod:`posenc.packed_attention`: one copy into head-major layout each way instead of one per tensor).

Without dropout (evaluation, ``p = 0``) the fast path computes exactly what the plain path computes. The plain
modules stay the default so that the readable code is the code that runs unless asked otherwise.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from .attention import MultiHeadAttention
from .dropout import FastDropout

__all__ = ["flush_denormals", "use_fast_path"]

M = TypeVar("M", bound=nn.Module)


def use_fast_path(model: M, enabled: bool = True) -> M:
    """Switch ``model`` (in place) to the fast path, or back to the plain one with ``enabled=False``."""
    for module in list(model.modules()):
        if isinstance(module, MultiHeadAttention):
            module.fast_dropout = enabled
        for name, child in list(module.named_children()):
            if enabled and type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p).train(child.training))
            elif not enabled and type(child) is FastDropout:
                setattr(module, name, nn.Dropout(child.p).train(child.training))
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
