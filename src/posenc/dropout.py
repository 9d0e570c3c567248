"""Inverted dropout (Srivastava et al. 2014) with a cheaper random mask: the fast path's dropout.

    y = x * m / (1 - p),    m_i ~ Bernoulli(1 - p) independently

On CPU, ``torch.nn.functional.dropout`` draws the mask with ``bernoulli_``, which costs about as much as the
matrix products of a small Transformer layer. Here the mask comes from raw 64-bit random words (from torch's
default generator or from generators seeded by it, so ``torch.manual_seed`` makes it repeatable), each split
into four 16-bit uniform integers compared with a threshold: a quarter of the random draws and no floating-point
conversion. The drop probability is thereby rounded to a multiple of 2^-16 (0.1 becomes 0.100006...); the
scale uses that rounded probability, so E[y] = x holds exactly.

A large mask is drawn in chunks of a fixed size, each from its own generator seeded from the default one: the
same mask for the same seed whatever the number of threads drawing it (:func:`set_mask_threads`; one by default,
the calling thread: inside a training step torch's spinning OpenMP workers make a pool of drawing threads a loss).
The chunks' generators are NumPy's SFC64 (Doty-Humphrey's small fast chaotic generator, which passes the
standard statistical batteries): on this project's CPU one of them draws 64-bit words about twice as fast as
torch's Mersenne twister (the draws were a third of the fast dropout's time). Each chunk's words are compared
with the threshold as soon as they are drawn, while they are still in the cache, and the 0/1 values written
straight in the mask's dtype (a 4M-entry fp32 mask in about 5 ms, against 16 ms for the words drawn first and
compared after), or applied to the values at once (:func:`relu_keep_`, :func:`keep_product`), so that no mask is
stored at all.

This is opt-in (``posenc.fast.use_fast_path``); the modules' default dropout is ``torch.nn.Dropout``.
"""

from __future__ import annotations

import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FastDropout", "apply_mask", "fast_dropout", "keep_mask", "keep_product", "keep_scale", "quantized_p",
    "random_words", "relu_keep_", "representable", "set_mask_threads",
]

_LEVELS = 1 << 16
_INT64_MIN = torch.iinfo(torch.int64).min


def _threshold(p: float) -> int:
    """The int16 threshold with ``P(half >= threshold) = 1 - quantized_p(p)`` for a uniform 16-bit ``half``."""
    return round(p * _LEVELS) - _LEVELS // 2


def _check_p(p: float, name: str) -> None:
    """A drop probability in [0, 1]: NaN or a value outside gave masks that wrapped around the int16 threshold and
    depended on the tensor's size."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name}: the drop probability p must be a real number, got {type(p).__name__} {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: the drop probability p must lie in [0, 1], got {p!r}")


def quantized_p(p: float) -> float:
    """The drop probability the 16-bit mask realises: ``round(p * 2^16) / 2^16``."""
    return round(p * _LEVELS) / _LEVELS


#: Random 64-bit words per generator when a mask is drawn in chunks (fixed, so the mask does not depend on threads).
_CHUNK_WORDS = 1 << 16
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}  # by (process, threads): a forked child needs its own


def _fill(chunk: Tensor, seed: int) -> None:
    """Fill a CPU int64 ``chunk`` with the words of an SFC64 generator seeded with ``seed`` (NumPy releases the
    interpreter lock while it draws)."""
    chunk.numpy().view(np.uint64)[:] = _sfc64_words(seed, chunk.numel())


def _sfc64_words(seed: int, count: int) -> np.ndarray:
    """The first ``count`` 64-bit words of the SFC64 generator seeded with ``seed`` (a chunk's words)."""
    return np.random.SFC64(seed % 2**64).random_raw(count)


def _chunk_halves(seed: int, n: int) -> np.ndarray:
    """The ``n`` uniform 16-bit integers a chunk's mask compares: the halves of the words :func:`_fill` draws."""
    return _sfc64_words(seed, (n + 3) // 4).view(np.int16)[:n]


#: The 0/1 values of a mask as NumPy can write them: bfloat16 (unknown to NumPy) as the bit pattern of 1.0.
_NUMPY_VIEWS = {torch.bool: (torch.bool, 1), torch.float16: (torch.float16, 1), torch.float32: (torch.float32, 1),
                torch.float64: (torch.float64, 1), torch.bfloat16: (torch.int16, 0x3F80)}


def _fill_mask(chunk: Tensor, seed: int, threshold: int) -> None:
    """Fill a CPU mask ``chunk`` (up to ``4 * _CHUNK_WORDS`` entries) with ``halves >= threshold`` as 0/1, the
    halves being those of the words :func:`_fill` draws for ``seed``: the same mask, without the words ever
    leaving the cache (the words of a large mask, then a pass that compares them, cost twice the memory traffic)."""
    n = chunk.numel()
    view, one = _NUMPY_VIEWS[chunk.dtype]
    halves = _chunk_halves(seed, n)
    out = chunk.view(view).numpy()
    if one == 1:
        np.greater_equal(halves, threshold, out=out)
    else:
        np.multiply(halves >= threshold, out.dtype.type(one), out=out)


_BF16_MAGNITUDE, _BF16_INF = 0x7FFF, 0x7F80  # bit masks: all but the sign; the exponent of inf and NaN
_BF16_SIGN = -0x8000  # the sign bit alone, as an int16


def _fill_kept(pair: tuple[Tensor, Tensor], seed: int, threshold: int, relu: bool) -> None:
    """``dst <- f(src) * keep`` for ``pair = (src, dst)`` (the same chunk for in place), ``f`` ReLU or the
    identity and ``keep`` the 0/1 values :func:`_fill_mask` would write for ``seed``, over a chunk still in the
    cache, with torch's arithmetic (``relu(-inf) = 0``, a NaN stays NaN, a dropped ``inf`` is ``inf * 0 = NaN``).
    bf16, unknown to NumPy, works on its bit patterns: a bf16 is positive exactly when its bits read as int16
    are, and clearing all but its sign bit gives the signed zero that ``x * 0`` gives, which is all a finite chunk
    needs; a chunk holding an inf or a NaN is computed in float32, which holds every bf16 exactly."""
    src, dst = pair
    keep = _chunk_halves(seed, src.numel()) >= threshold
    if src.dtype != torch.bfloat16:
        values, out = src.numpy(), dst.numpy()
    else:
        bits, out_bits = src.view(torch.int16).numpy(), dst.view(torch.int16).numpy()
        if int(np.bitwise_and(bits, _BF16_MAGNITUDE).max()) < _BF16_INF:
            if relu:  # relu(x) * m is +0 unless x > 0 and kept
                np.multiply(bits, (bits > 0) & keep, out=out_bits)
            else:  # x * 0 keeps x's sign, as in torch (-1 * 0 = -0): a dropped entry keeps only its sign bit
                bit_mask = np.negative(keep.view(np.int8).astype(np.int16))  # -1 (all bits) where kept, else 0
                np.bitwise_or(bit_mask, np.int16(_BF16_SIGN), out=bit_mask)  # ... else the sign bit
                np.bitwise_and(bits, bit_mask, out=out_bits)  # (np.where builds the same mask 5x slower)
            return
        values = out = (bits.astype(np.int32) << 16).view(np.float32)
    with np.errstate(invalid="ignore"):  # inf * 0 = NaN, as in torch
        if relu:
            values = np.maximum(values, 0, out=out)
        np.multiply(values, keep, out=out)
    if src.dtype == torch.bfloat16:  # back to bf16: every value is a bf16 value (or NaN), so the top half is exact
        out_bits[:] = (out.view(np.int32) >> 16).astype(np.int16)


def _chunk_entries() -> int:
    """Mask entries per chunk: four 16-bit halves per word."""
    return 4 * _CHUNK_WORDS


def _in_chunks(n: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a mask of ``n`` entries is drawn chunk by chunk (larger than one chunk, on the CPU)."""
    return n > _chunk_entries() and device.type == "cpu" and dtype in _NUMPY_VIEWS


def _chunk_seeds(count: int, generator: torch.Generator | None) -> list[int]:
    """One seed per chunk, drawn from ``generator`` (torch's default one if None)."""
    return torch.empty(count, dtype=torch.int64).random_(_INT64_MIN, None, generator=generator).tolist()


_mask_threads = 1


def set_mask_threads(threads: int) -> int:
    """Draw large masks on ``threads`` threads from now on (1, the default: the calling thread); returns the
    previous count. The masks are the same for any count (each chunk has its own generator).

    Why one by default: inside a training step torch's OpenMP workers keep spinning for a while after each
    parallel operation, and a pool drawing then competes with them for the cores. The whole base-config step
    of ``benchmarks/train_speed.py`` (2 torch threads), the calling thread alone against a pool of two,
    alternating in one process: median of the paired ratios 0.94 and 0.975 in two fp32 runs, 0.975 in bf16
    (medians with / without the pool: fp32 3.33 / 2.97 s, bf16 1.74 / 1.53 s). A pool pays where torch's workers
    sleep (``OMP_WAIT_POLICY=PASSIVE``) or for masks drawn on their own (a 4M-entry fp32 mask alone, two cores:
    5.1 ms on one thread, 4.1 on two).
    """
    global _mask_threads
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"mask threads must be an int, got {type(threads).__name__} {threads!r}")
    if threads < 1:
        raise ValueError(f"mask threads must be >= 1, got {threads}")
    previous, _mask_threads = _mask_threads, int(threads)
    for key in [k for k in _pools if k[0] == os.getpid() and k[1] != _mask_threads]:
        _pools.pop(key).shutdown(wait=False)  # idle threads of another count: let them go
    return previous


def _on_threads(fill, chunks: tuple, seeds: list[int], *args: int | bool) -> None:
    """``fill(chunk, seed, *args)`` for every chunk (a tensor, or a pair of them), on the mask threads
    (:func:`set_mask_threads`)."""
    threads = _mask_threads
    if threads < 2:
        for chunk, seed in zip(chunks, seeds):
            fill(chunk, seed, *args)
        return
    key = (os.getpid(), threads)
    pool = _pools.get(key) or _pools.setdefault(key, ThreadPoolExecutor(threads, "posenc-dropout"))
    list(pool.map(lambda chunk, seed: fill(chunk, seed, *args), chunks, seeds))


def random_words(n: int, *, device: torch.device | None = None, generator: torch.Generator | None = None) -> Tensor:
    """``n`` int64 words with all 64 bits uniform; on CPU, more than one chunk is drawn chunk by chunk, on the
    mask threads (:func:`set_mask_threads`)."""
    words = torch.empty(n, dtype=torch.int64, device=device)
    if n <= _CHUNK_WORDS or words.device.type != "cpu":
        return words.random_(_INT64_MIN, None, generator=generator)
    chunks = words.split(_CHUNK_WORDS)
    _on_threads(_fill, chunks, _chunk_seeds(len(chunks), generator))
    return words


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, *, device: torch.device | None = None,
              generator: torch.Generator | None = None, dtype: torch.dtype = torch.bool) -> Tensor:
    """Mask of ``shape``, True / 1 (keep) with probability ``1 - quantized_p(p)``, independently.

    Each random word gives four 16-bit halves, compared with a threshold. With a floating ``dtype`` the 0/1
    values are written in that dtype directly (no bool mask to convert). A CPU mask of more than one chunk of
    words is compared chunk by chunk as its words are drawn (:func:`_fill_mask`); the mask is the same as the
    halves of :func:`random_words` compared in one pass.
    """
    _check_p(p, "keep_mask")
    n = 1
    for s in shape:
        n *= s
    if not representable(p):  # p rounds to 0 (keep all) or 1 (drop all): beyond the int16 threshold's range
        keep = quantized_p(p) < 0.5
        return torch.full(tuple(shape), keep, dtype=dtype, device=device)
    threshold = _threshold(p)
    if _in_chunks(n, torch.device(device or "cpu"), dtype):
        mask = torch.empty(n, dtype=dtype)
        chunks = mask.split(_chunk_entries())
        _on_threads(_fill_mask, chunks, _chunk_seeds(len(chunks), generator), threshold)
        return mask.view(shape)
    words = random_words((n + 3) // 4, device=device, generator=generator)  # all 64 bits uniform
    halves = words.view(torch.int16)[:n]  # 4 independent uniform 16-bit integers per word
    if dtype == torch.bool:
        return (halves >= threshold).view(shape)
    return torch.ge(halves, threshold, out=halves.new_empty(n, dtype=dtype)).view(shape)


def _kept(src: Tensor, dst: Tensor, p: float, relu: bool, generator: torch.Generator | None) -> bool:
    """``dst <- f(src) * m`` chunk by chunk on the mask threads (:func:`_fill_kept`), ``m`` the :func:`keep_mask` of
    the same generator state; False (nothing done, nothing drawn) where the mask would not be drawn in chunks."""
    if not (_in_chunks(src.numel(), src.device, src.dtype) and src.is_floating_point() and src.is_contiguous()
            and representable(p)):
        return False
    pairs = tuple(zip(src.view(-1).split(_chunk_entries()), dst.view(-1).split(_chunk_entries())))
    _on_threads(_fill_kept, pairs, _chunk_seeds(len(pairs), generator), _threshold(p), relu)
    return True


def _refuse_grad(t: Tensor, name: str, why: str) -> None:
    """``relu_keep_`` and ``keep_product`` write outside autograd: a tensor that needs a gradient is refused."""
    if torch.is_grad_enabled() and t.requires_grad:
        raise ValueError(f"{name} {why}: call it on a tensor that needs no gradient, or under torch.no_grad()")


def relu_keep_(h: Tensor, p: float, *, generator: torch.Generator | None = None) -> Tensor:
    """In place: ``h <- relu(h) * m`` with ``m`` the :func:`keep_mask` of ``h``'s shape that the same generator
    state gives; unscaled (the caller applies :func:`keep_scale`). Returns ``h``.

    The fast path's feed-forward block (:mod:`posenc.fused_feedforward`) drops the ReLU's output: ReLU and mask
    together in one pass, with the large CPU mask's words compared chunk by chunk as they are drawn, and no mask
    kept (the entries that passed are where the result is positive). The chunks are written outside autograd, so
    ``h`` must need no gradient here (call it under ``torch.no_grad()`` or inside an autograd function's
    forward); its version counter is advanced, so a saved copy of it is caught by autograd as modified.
    """
    _refuse_grad(h, "relu_keep_", "writes h in place outside autograd")
    _check_p(p, "relu_keep_")
    if _kept(h, h, p, True, generator):
        torch.autograd.graph.increment_version(h)
        return h
    keep = keep_mask(h.shape, p, device=h.device, generator=generator, dtype=h.dtype)
    return h.clamp_min_(0).mul_(keep)


def keep_product(x: Tensor, p: float, *, generator: torch.Generator | None = None) -> Tensor:
    """``x * m``, a new tensor, with ``m`` the :func:`keep_mask` of ``x``'s shape that the same generator state
    gives; unscaled (the caller applies :func:`keep_scale`), and exact in any dtype (entries are kept or zeroed).

    The fast path's attention (:mod:`posenc.packed_attention`) drops its weights this way: one pass, with a large
    CPU mask compared chunk by chunk as its words are drawn, and no mask kept (where the weights are positive,
    ``x * m > 0`` is the mask). Not differentiable itself: ``x`` must need no gradient here (call it under
    ``torch.no_grad()`` or inside an autograd function's forward), where the result would silently have none.
    """
    _refuse_grad(x, "keep_product", "is not differentiable")
    _check_p(p, "keep_product")
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    with torch.no_grad():
        if _kept(x, out, p, False, generator):
            return out
        return torch.mul(x, keep_mask(x.shape, p, device=x.device, generator=generator, dtype=x.dtype), out=out)


class _ScaledMask(torch.autograd.Function):
    """``y = x * ones * scale`` and ``dx = dy * ones * scale``, each in one pass (``addcmul`` onto a zero scalar).

    ``addcmul`` computes in float for bf16/fp16 and rounds once, so the scale acts at full precision (1/0.9 rounded
    to bf16, 1.109, would bias every kept entry by -0.2%); two separate products would take two passes each way.
    Only the 0/1 mask is kept for the backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, ones: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(ones)
        ctx.scale = scale
        return apply_mask(x, ones, scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (ones,) = ctx.saved_tensors
        return apply_mask(grad, ones, ctx.scale), None, None


def keep_scale(p: float) -> float:
    """The factor of inverted dropout's kept entries, ``1 / (1 - quantized_p(p))``: E[y] = x exactly."""
    _check_p(p, "keep_scale")
    if quantized_p(p) >= 1.0:
        raise ValueError(f"keep_scale: p={p} drops every entry (to the mask's 16-bit resolution): nothing to scale")
    return 1.0 / (1.0 - quantized_p(p))


def apply_mask(x: Tensor, ones: Tensor, scale: float) -> Tensor:
    """``x * ones * scale`` in one pass (``addcmul`` onto a zero scalar: in float for bf16/fp16, rounded once);
    dropout's forward and, with the same mask and scale, its backward."""
    return torch.addcmul(x.new_zeros(()), x, ones, value=scale)


def representable(p: float) -> bool:
    """Whether the 16-bit mask drops with probability ``p`` to its resolution: ``0 < quantized_p(p) < 1``, i.e.
    ``2^-17 < p < 1 - 2^-17`` (a smaller ``p`` would round to no dropout at all, a larger one to dropping all)."""
    return math.isfinite(p) and 0.0 < quantized_p(p) < 1.0


def fast_dropout(x: Tensor, p: float, training: bool = True, *, generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout of ``x`` with a :func:`keep_mask`; the identity when ``p == 0`` or not training.

    A ``p`` within 2^-17 of 0 or 1 (1 included: everything dropped) is beyond the 16-bit mask's resolution; such
    calls are ``torch.nn.functional.dropout``'s, so the fast path computes what the plain one does for every ``p``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if not representable(p):
        return F.dropout(x, p, training=True)
    ones = keep_mask(x.shape, p, device=x.device, generator=generator, dtype=x.dtype)  # 0/1 in x's dtype
    return _ScaledMask.apply(x, ones, keep_scale(p))


class FastDropout(nn.Dropout):
    """``torch.nn.Dropout`` with :func:`fast_dropout`'s cheaper mask; same ``p``, same (empty) state."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            raise ValueError("FastDropout does not support inplace=True")
        return fast_dropout(x, self.p, self.training)
