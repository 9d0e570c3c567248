"""The public entry points: ``generate`` for language models, ``translate`` for seq2seq models, and
``beam_search`` for the n best hypotheses with their scores.

All three run without gradients, on the model's device, in whatever autocast context the caller opened, and
leave the model's mode alone: call ``model.eval()`` first (dropout, and randomized positions, differ in
training mode).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch

from .._checks import check_choice, check_positive_int
from .beam import Hypothesis, beam_loop
from .sampling import Generators, check_real, check_sampling, decode_loop, greedy_pick, sampler
from .session import CausalLM, EncoderDecoder, LMSession, Seq2SeqSession, Session, TokenLists

__all__ = ["Strategy", "beam_search", "generate", "translate"]

Strategy = Literal["greedy", "sample", "beam"]
_STRATEGIES = ("greedy", "sample", "beam")


def _check_beam(beam_size: int, num_return: int = 1) -> None:
    check_positive_int("beam_size", beam_size)
    check_positive_int("num_return", num_return)
    if num_return > beam_size:
        raise ValueError(f"num_return={num_return} cannot exceed beam_size={beam_size}")


def _check_token(name: str, value: int | None, *, required: bool) -> None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a token id (an int >= 0), got {value!r}")


def _pad_id(model: object) -> int:
    pad = getattr(getattr(model, "config", None), "pad_id", None)
    return 0 if pad is None else int(pad)


def _check_bos(model: object, bos_id: int | None) -> None:
    """``bos_id`` is fed to the decoder before any logits exist, so it is checked against the target vocabulary
    the model's config declares (a model without one reports a bad id itself)."""
    _check_token("bos_id", bos_id, required=True)
    config = getattr(model, "config", None)
    vocab = getattr(config, "tgt_vocab_size", getattr(config, "vocab_size", None))
    if isinstance(vocab, int) and bos_id is not None and bos_id >= vocab:
        raise ValueError(f"bos_id={bos_id} is not in the model's target vocabulary of {vocab} tokens")


_SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed takes


def _check_seed(seed: int | None, generator: Generators) -> None:
    """A seed torch's generator takes (it raised its own errors, and greedy decoding none), and the draws' source
    named once: a seed and a generator together would leave one of them unused."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    if seed is not None and not _SEED_RANGE[0] <= seed < _SEED_RANGE[1]:
        raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}")
    if seed is not None and generator is not None:
        raise ValueError(f"give seed ({seed}) or generator, not both: the draws come from one of them")
    if generator is None or isinstance(generator, torch.Generator):
        return
    given = list(generator) if isinstance(generator, Sequence) and not isinstance(generator, str) else [generator]
    bad = [g for g in given if not isinstance(g, torch.Generator)]
    if bad:
        raise TypeError(f"generator must be a torch.Generator or a sequence of them, got {type(bad[0]).__name__}")


def _generator(session: Session, seed: int | None, generator: Generators) -> Generators:
    """The draws' source: the caller's generator(s), on the model's device, or a new one seeded by ``seed``."""
    if generator is None:
        return None if seed is None else torch.Generator(device=session.device).manual_seed(int(seed))
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if not isinstance(generator, torch.Generator) and len(gens) != session.batch:
        raise ValueError(f"generator holds {len(gens)} generators for {session.batch} sequences: give one per "
                         "sequence, or a single one")
    for g in gens:
        if g.device.type != session.device.type:
            raise ValueError(f"a generator on {g.device} cannot draw for a model on {session.device}")
    return generator


def _run(
    session: Session, *, strategy: str, max_new_tokens: int, eos_id: int | None, temperature: float,
    top_k: int | None, top_p: float | None, seed: int | None, beam_size: int, length_penalty: float,
    generator: Generators = None,
) -> list[list[int]]:
    if strategy == "beam":
        hyps = beam_loop(
            session, beam_size=beam_size, max_new_tokens=max_new_tokens, eos_id=eos_id, length_penalty=length_penalty
        )
        return [h[0].tokens for h in hyps]
    if strategy == "greedy":
        pick = greedy_pick
    else:
        draws = _generator(session, seed, generator)
        pick = sampler(temperature=temperature, top_k=top_k, top_p=top_p, generator=draws)
    return decode_loop(session, pick=pick, max_new_tokens=max_new_tokens, eos_id=eos_id)


def _check_length_penalty(length_penalty: float) -> None:
    check_real("length_penalty", length_penalty)
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")


def _check_common(
    strategy: str, max_new_tokens: int, eos_id: int | None, beam_size: int, length_penalty: float,
    temperature: float, top_k: int | None, top_p: float | None, seed: int | None, generator: Generators,
) -> None:
    """Every option is checked, those of the strategies not in use too: a bad value is named, never ignored."""
    check_choice("strategy", strategy, _STRATEGIES)
    check_positive_int("max_new_tokens", max_new_tokens)
    _check_token("eos_id", eos_id, required=False)
    _check_beam(beam_size)
    _check_length_penalty(length_penalty)
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    _check_seed(seed, generator)


@torch.no_grad()
def generate(
    model: CausalLM,
    prompts: TokenLists,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    strategy: Strategy = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    beam_size: int = 4,
    length_penalty: float = 1.0,
    generator: Generators = None,
) -> list[list[int]]:
    """Continue each prompt of a decoder-only model; return the new tokens of each, EOS excluded.

    ``prompts`` are token-id lists of any lengths (run as one left-padded batch; each behaves as if alone) or
    a 2-D tensor of full rows. A row stops at its first ``eos_id`` or after ``max_new_tokens`` tokens.
    ``strategy``: ``"greedy"`` (argmax), ``"sample"`` (``temperature``, then ``top_k``, then ``top_p``; the draws
    are reproducible for a given ``seed``), or ``"beam"`` (``beam_size``, ``length_penalty``; the best
    hypothesis; :func:`beam_search` gives the n best with scores).

    Instead of ``seed`` (an int in [-2**63, 2**64)), sampling can draw from ``generator``: one ``torch.Generator``
    (on the model's device) that the caller keeps using across calls, or a sequence of one per prompt, so that
    each prompt's draws depend on its own generator only and not on which prompts share its batch.
    """
    _check_common(strategy, max_new_tokens, eos_id, beam_size, length_penalty, temperature, top_k, top_p, seed,
                  generator)
    session = LMSession(model, prompts, max_new_tokens=max_new_tokens, pad_id=_pad_id(model))
    return _run(
        session, strategy=strategy, max_new_tokens=max_new_tokens, eos_id=eos_id, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed, beam_size=beam_size, length_penalty=length_penalty, generator=generator,
    )


@torch.no_grad()
def translate(
    model: EncoderDecoder,
    src: TokenLists,
    *,
    bos_id: int,
    eos_id: int | None,
    max_len: int,
    strategy: Strategy = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    beam_size: int = 4,
    length_penalty: float = 1.0,
    generator: Generators = None,
) -> list[list[int]]:
    """Decode a target for each source of an encoder-decoder model; return its tokens, BOS and EOS excluded.

    ``src`` are token-id lists of any lengths (right-padded into one batch) or a 2-D tensor in which the model's
    ``pad_id`` marks padding. Decoding starts from ``bos_id`` and a row stops at ``eos_id`` or after ``max_len``
    generated tokens (``eos_id=None``: always ``max_len``). ``strategy`` and its options, ``seed`` and
    ``generator`` (one per source, or one for all) too, are those of :func:`generate`.
    """
    _check_common(strategy, max_len, eos_id, beam_size, length_penalty, temperature, top_k, top_p, seed, generator)
    _check_bos(model, bos_id)
    session = Seq2SeqSession(model, src, bos_id=bos_id, max_new_tokens=max_len, pad_id=_pad_id(model))
    return _run(
        session, strategy=strategy, max_new_tokens=max_len, eos_id=eos_id, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed, beam_size=beam_size, length_penalty=length_penalty, generator=generator,
    )


@torch.no_grad()
def beam_search(
    model: CausalLM | EncoderDecoder,
    inputs: TokenLists,
    *,
    max_new_tokens: int,
    eos_id: int | None,
    beam_size: int = 4,
    num_return: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool = True,
    bos_id: int | None = None,
) -> list[list[Hypothesis]]:
    """The ``num_return`` best hypotheses of each input, best first, with their scores (see :mod:`.beam`).

    ``inputs`` are prompts for a decoder-only model, or sources for an encoder-decoder model (detected by its
    ``encode`` method), which then needs ``bos_id``. ``max_new_tokens`` bounds the generated length (EOS
    included). ``early_stopping=False`` keeps searching until no live beam can beat the finished ones.
    """
    check_positive_int("max_new_tokens", max_new_tokens)
    _check_beam(beam_size, num_return)
    _check_token("eos_id", eos_id, required=False)
    _check_length_penalty(length_penalty)
    session: Session
    if hasattr(model, "encode"):
        _check_bos(model, bos_id)
        session = Seq2SeqSession(model, inputs, bos_id=bos_id, max_new_tokens=max_new_tokens, pad_id=_pad_id(model))
    else:
        session = LMSession(model, inputs, max_new_tokens=max_new_tokens, pad_id=_pad_id(model))
    return beam_loop(
        session, beam_size=beam_size, max_new_tokens=max_new_tokens, eos_id=eos_id, length_penalty=length_penalty,
        early_stopping=early_stopping, num_return=num_return,
    )
