"""Decoding sessions: one interface over a language model's and a seq2seq model's cached forward passes.

A session turns a batch of inputs into the logits of the next token (``start``), feeds one token a sequence
and returns the next logits (``step``), and reorders or repeats its rows (``reorder``, for beam search). The
strategies in this package talk only to sessions, so greedy, sampling and beam search are written once for
both kinds of model.

Language models take prompts of different lengths as one left-padded batch: the cache counts positions from
each sequence's real tokens, so a short prompt behaves exactly as if it were alone. Seq2seq models encode the
(right-padded) source once; each decoder layer computes its cross-attention keys and values at the first step
and keeps them.

Legend: B batch (rows: sequences, or sequences × beams), T prompt length, S source length, V vocabulary.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..cache import StackCache

__all__ = ["CausalLM", "EncoderDecoder", "LMSession", "Seq2SeqSession", "Session", "pad_batch"]

TokenLists = Sequence[Sequence[int]] | Tensor


@runtime_checkable
class CausalLM(Protocol):
    """What generation needs of a decoder-only model (``posenc.models.LanguageModel`` has it)."""

    def __call__(self, ids: Tensor, *, padding_mask: Tensor | None = ..., cache: StackCache | None = ...) -> Tensor: ...

    def new_cache(self) -> StackCache: ...


@runtime_checkable
class EncoderDecoder(Protocol):
    """What generation needs of an encoder-decoder model (``posenc.models.Seq2Seq`` has it)."""

    def encode(self, src: Tensor, *, src_padding_mask: Tensor | None = ...) -> tuple[Tensor, Tensor | None]: ...

    def decode(
        self, tgt: Tensor, memory: Tensor, memory_padding_mask: Tensor | None = ..., *, cache: StackCache | None = ...
    ) -> Tensor: ...

    def new_cache(self) -> StackCache: ...


class Session(Protocol):
    """The interface the decoding strategies use."""

    batch: int
    device: torch.device

    def start(self) -> Tensor:
        """Run the inputs; return the logits of each row's next token, ``(B, V)``."""
        ...

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token a row, ``(B,)``; return the logits of the next one, ``(B, V)``."""
        ...

    def reorder(self, index: Tensor, *, within_source: bool) -> None:
        """Keep rows ``index`` in that order (repeats allowed). ``within_source=True`` promises that every new
        row comes from a row of the same source, so per-source state (cross-attention K, V) may stay."""
        ...


def _device_of(model: object) -> torch.device:
    params = getattr(model, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")


def _token_list(seq: object, where: str) -> list[int]:
    """One sequence as a list of ints, or a TypeError that names it: a flat prompt ``[1, 2, 3]`` would otherwise
    fail with "'int' object is not iterable", a string be read character by character, and 1.7 become 1."""
    arrays = (Tensor, np.ndarray)
    if isinstance(seq, (str, bytes)) or not isinstance(seq, (Sequence, *arrays)) or (
        isinstance(seq, arrays) and seq.ndim != 1
    ):
        hint = "encode text to token ids first" if isinstance(seq, (str, bytes)) else "wrap a single prompt: [[...]]"
        raise TypeError(f"{where} must be a list of token ids, got {type(seq).__name__} {seq!r} ({hint})")
    out = []
    for j, token in enumerate(seq.tolist() if isinstance(seq, arrays) else seq):
        try:
            if isinstance(token, bool):
                raise TypeError
            out.append(operator.index(token))  # ints of any kind (numpy, 0-d tensors), never a float
        except TypeError:
            raise TypeError(f"{where}[{j}] must be an int token id, got {type(token).__name__} {token!r}") from None
    return out


def pad_batch(
    seqs: TokenLists, *, pad_id: int, left: bool, device: torch.device, name: str
) -> tuple[Tensor, Tensor]:
    """Token lists -> ``(ids (B, T), padding (B, T) bool, True = pad)``; a 2-D tensor is taken as full rows.

    ``left=True`` aligns the sequences on the right (prompts for a decoder-only model, whose next token follows
    the last one); ``left=False`` pads on the right (sources for an encoder).
    """
    if isinstance(seqs, Tensor):
        if seqs.dim() != 2 or seqs.dtype.is_floating_point or seqs.dtype == torch.bool:
            raise ValueError(f"{name} as a tensor must be 2-D integer ids (B, T), got {seqs.dtype} {tuple(seqs.shape)}")
        if seqs.shape[0] == 0 or seqs.shape[1] == 0:
            raise ValueError(f"{name} must hold at least one non-empty sequence, got shape {tuple(seqs.shape)}")
        ids = seqs.to(device)
        return ids, torch.zeros(ids.shape, dtype=torch.bool, device=device)
    if isinstance(seqs, Iterable) and not isinstance(seqs, (str, bytes, Sequence, np.ndarray)):
        seqs = list(seqs)  # a generator of prompts
    if isinstance(seqs, (str, bytes)) or not isinstance(seqs, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a list of token-id lists or a 2-D tensor, got {type(seqs).__name__} {seqs!r}")
    lists = [_token_list(s, f"{name}[{i}]") for i, s in enumerate(seqs)]
    if not lists:
        raise ValueError(f"{name} is empty: give at least one sequence")
    for i, s in enumerate(lists):
        if not s:
            raise ValueError(f"{name}[{i}] is empty: every sequence needs at least one token (e.g. a BOS id)")
    width = max(len(s) for s in lists)
    ids = torch.full((len(lists), width), pad_id, dtype=torch.long)
    padding = torch.ones(len(lists), width, dtype=torch.bool)
    for i, s in enumerate(lists):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(s, dtype=torch.long)
        padding[i, cols] = False
    return ids.to(device), padding.to(device)


#: New tokens whose cache is reserved up front; past them the cache doubles as it fills (O(log T) copies), so a
#: large ``max_new_tokens`` allocates only as far as generation gets before every sequence ends.
RESERVED_NEW_TOKENS = 1024


def _reserved(prompt_len: int, max_new_tokens: int) -> int:
    return prompt_len + min(max_new_tokens, RESERVED_NEW_TOKENS)


class LMSession:
    """A decoder-only model over a left-padded batch of prompts."""

    def __init__(self, model: CausalLM, prompts: TokenLists, *, max_new_tokens: int, pad_id: int = 0) -> None:
        self.model = model
        self.device = _device_of(model)
        self.ids, self.padding = pad_batch(prompts, pad_id=pad_id, left=True, device=self.device, name="prompts")
        self.batch = self.ids.shape[0]
        self.cache = model.new_cache()
        self.cache.reserve(_reserved(self.ids.shape[1], max_new_tokens))
        self._no_pad = torch.zeros(self.batch, 1, dtype=torch.bool, device=self.ids.device)

    def start(self) -> Tensor:
        logits = self.model(self.ids, padding_mask=self.padding, cache=self.cache)  # (B, T, V)
        return logits[:, -1]  # (B, V): left padding puts every prompt's last token in the last column

    def step(self, tokens: Tensor) -> Tensor:
        # An explicit all-False mask: a generated token equal to the pad id is still a real token.
        return self.model(tokens[:, None], padding_mask=self._no_pad, cache=self.cache)[:, -1]  # (B, V)

    def reorder(self, index: Tensor, *, within_source: bool) -> None:
        self.cache.reorder(index, cross=not within_source)
        self.batch = index.shape[0]
        if self._no_pad.shape[0] != self.batch:
            self._no_pad = torch.zeros(self.batch, 1, dtype=torch.bool, device=index.device)


class Seq2SeqSession:
    """An encoder-decoder model over a right-padded batch of sources; decoding starts from ``bos_id``."""

    def __init__(
        self, model: EncoderDecoder, src: TokenLists, *, bos_id: int, max_new_tokens: int, pad_id: int = 0
    ) -> None:
        self.model = model
        self.device = device = _device_of(model)
        ids, padding = pad_batch(src, pad_id=pad_id, left=False, device=device, name="src")
        if isinstance(src, Tensor):
            padding = ids == pad_id  # a tensor batch marks its padding with the pad id, as in training
        self.memory, self.memory_padding = model.encode(ids, src_padding_mask=padding)  # (B, S, D), (B, S) | None
        self.batch = ids.shape[0]
        self.bos = torch.full((self.batch, 1), bos_id, dtype=torch.long, device=device)
        self.cache = model.new_cache()
        self.cache.reserve(_reserved(1, max_new_tokens))

    def _decode(self, tgt: Tensor) -> Tensor:
        return self.model.decode(tgt, self.memory, self.memory_padding, cache=self.cache)[:, -1]  # (B, V)

    def start(self) -> Tensor:
        return self._decode(self.bos)

    def step(self, tokens: Tensor) -> Tensor:
        return self._decode(tokens[:, None])

    def reorder(self, index: Tensor, *, within_source: bool) -> None:
        self.cache.reorder(index, cross=not within_source)
        if not within_source:
            self.memory = self.memory.index_select(0, index)
            if self.memory_padding is not None:
                self.memory_padding = self.memory_padding.index_select(0, index)
        self.batch = index.shape[0]
