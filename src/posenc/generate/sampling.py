"""Greedy decoding and sampling (temperature, top-k, top-p), one token a step for every row at once.

Sampling follows the usual order: divide the logits by the temperature, keep the ``top_k`` most likely tokens
(Fan et al. 2018, "Hierarchical Neural Story Generation"), then keep the smallest set of tokens whose
probability mass reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020, "The Curious Case of Neural Text
Degeneration"), renormalize and draw. Draws come from a ``torch.Generator`` seeded by the caller, so a seed
gives the same tokens every run; with one generator per row, a row's draws depend on its own generator only, not
on which rows share its batch.

The logits are divided by the temperature in float32. A temperature so small that this overflows (1e-40 against
logits of order 1) is the limit T -> 0 of sampling, which is greedy decoding: such a row takes its argmax
rather than feeding infinities to the draw.

Each row stops at its first EOS or after ``max_new_tokens``; finished rows keep stepping (their tokens are
discarded) until every row has finished, so the batch stays one tensor.

Legend: B batch, V vocabulary.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .session import Session

__all__ = ["check_in_vocabulary", "check_sampling", "decode_loop", "filter_logits", "greedy_pick", "sampler"]

Pick = Callable[[Tensor], Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def check_real(name: str, value: object) -> None:
    """A TypeError unless ``value`` is a real number (a 0-d non-bool tensor counts): ``"1"`` or ``True`` would
    pass comparisons or ``float()`` (or fail in them with a message that names no option)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool and not value.is_complex():
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")


def _check_top_p(top_p: float | None) -> None:
    if top_p is not None:
        check_real("top_p", top_p)
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")


def check_sampling(*, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """A ValueError naming a bad sampling option (a TypeError for one that is not a number)."""
    check_real("temperature", temperature)
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r} "
                         "(use strategy='greedy' for argmax decoding)")
    _check_top_k(top_k)
    _check_top_p(top_p)


def check_in_vocabulary(name: str, token: int | None, logits: Tensor) -> None:
    """A ValueError if ``token`` is not an index of the model's vocabulary (the last dim of its ``logits``)."""
    if token is not None and token >= logits.shape[-1]:
        raise ValueError(f"{name}={token} is not in the model's vocabulary of {logits.shape[-1]} tokens")


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to ``-inf`` every logit outside the top-k and outside the nucleus of mass ``top_p``; ``(..., V)``.

    Top-k keeps exactly ``min(k, V)`` tokens. Top-p keeps, in order of decreasing probability, every token whose
    preceding mass is still below ``p``: the smallest set whose mass is at least ``p`` (the most likely token is
    always kept). Both act on the logits as given (after any temperature).
    """
    _check_top_k(top_k)
    _check_top_p(top_p)
    if top_k is not None and top_k < logits.shape[-1]:
        values, index = logits.topk(top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, index, values)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def greedy_pick(logits: Tensor) -> Tensor:
    """The most likely token of each row: ``(B, V)`` -> ``(B,)``."""
    return logits.argmax(dim=-1)


def _scaled(logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``logits / temperature`` in float32 ``(B, V)``, and the rows where that overflowed ``(B,)`` (a +inf, or a
    NaN; a masked -inf stays -inf). Those rows are at the T -> 0 limit: their caller takes the argmax."""
    masked = logits == float("-inf")
    scaled = (logits.float() / temperature).masked_fill(masked, float("-inf"))
    overflow = (scaled.isnan() | (scaled == float("inf"))).any(dim=-1)
    return scaled.masked_fill(overflow[:, None], 0.0), overflow


def _draw(probs: Tensor, generator: Generators) -> Tensor:
    """One token a row of ``probs`` ``(B, V)``: from one generator for the batch, or from each row's own."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    if len(generator) != probs.shape[0]:
        raise ValueError(f"generator holds {len(generator)} generators for a batch of {probs.shape[0]} rows: give "
                         "one per row, or a single one")
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generator)])  # (B,)


def sampler(
    *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, generator: Generators = None
) -> Pick:
    """A function ``(B, V)`` logits -> ``(B,)`` sampled tokens; ``generator`` is one ``torch.Generator`` for every
    row, or a sequence of one per row."""
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)

    def pick(logits: Tensor) -> Tensor:
        scaled, overflow = _scaled(logits, temperature)
        probs = torch.softmax(filter_logits(scaled, top_k=top_k, top_p=top_p), dim=-1)  # (B, V)
        tokens = _draw(probs, generator)  # (B,)
        return torch.where(overflow, logits.argmax(dim=-1), tokens)

    return pick


def decode_loop(session: Session, *, pick: Pick, max_new_tokens: int, eos_id: int | None) -> list[list[int]]:
    """Run ``session`` with one ``pick`` a step; each row's new tokens, cut before its first EOS."""
    logits = session.start()
    check_in_vocabulary("eos_id", eos_id, logits)
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    out: list[Tensor] = []  # one (B,) per step: nothing sized by max_new_tokens, which may be far off
    for t in range(max_new_tokens):
        tokens = pick(logits)  # (B,)
        if eos_id is not None:
            tokens = tokens.masked_fill(finished, eos_id)  # finished rows keep feeding EOS
            finished |= tokens == eos_id
        out.append(tokens)
        if t + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
            break
        logits = session.step(tokens)
    rows = torch.stack(out, dim=1).tolist()  # (B, steps)
    if eos_id is None:
        return rows
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]
