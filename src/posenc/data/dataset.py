"""The dataset interface the trainer consumes, and the helpers that pad examples into a ``Batch``.

A dataset is any object with these members (a ``typing.Protocol``, so nothing needs to inherit from it):

``model_kind: str``
    ``"lm"`` (decoder-only ``LanguageModel``: ``Batch.src`` is None) or ``"seq2seq"`` (``Seq2Seq``:
    ``Batch.src`` holds the encoder input).
``tokenizer: Tokenizer``
    The vocabulary (one joint vocabulary for source and target). The trainer saves it in the run directory and
    records its fingerprint in every checkpoint.
``train_batches(start: int = 0) -> Iterator[Batch]``
    An endless stream of training batches beginning at position ``start``, the number of batches consumed so
    far. The stream must be a pure function of the dataset's seed and ``start``: batch ``k`` is the same
    whether the stream is begun at 0 or resumed at ``k``. That position is all a checkpoint stores about the
    data, and it is what makes a killed-and-resumed run bit-identical to an uninterrupted one. (Synthetic tasks
    derive every example from ``(seed, split, index)``; text derives each block offset from ``(seed, index)``;
    token-bucket batching shuffles each epoch from ``(seed, epoch)``.)
``eval_names() -> list[str]``
    The evaluation sets, e.g. ``["valid"]`` or ``["in_lengths", "out_lengths"]``.
``eval_batches(name: str) -> Iterator[Batch]``
    Every batch of one evaluation set, the same each time it is called.

Optional:

``extra_metrics(model, name, *, device, autocast) -> dict[str, float]``
    Metrics that need decoding (BLEU and chrF for translation); the trainer adds them to the evaluation row.
``describe() -> str``
    One line for the log (sizes, filtering report).

Targets equal to ``tokenizer.pad_id`` are ignored by the loss; ``Batch.lengths`` (the task length of each
example) enables exact match per length.

Legend: B batch, S source length, T target length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from .batch import Batch
from .tokenizers import Tokenizer

__all__ = ["Dataset", "pad_lm_examples", "pad_seq2seq_examples"]


@runtime_checkable
class Dataset(Protocol):
    model_kind: str
    tokenizer: Tokenizer

    def train_batches(self, start: int = 0) -> Iterator[Batch]: ...

    def eval_names(self) -> list[str]: ...

    def eval_batches(self, name: str) -> Iterator[Batch]: ...


def _padded(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


def pad_lm_examples(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *, tokenizer: Any, sep_id: int,
    lengths: Sequence[int] | None = None,
) -> Batch:
    """Decoder-only layout of Kazemnejad et al. (2023): ``BOS prompt SEP answer EOS``; the loss sees the answer
    and its EOS only (targets of the prompt and of the separator are ``pad_id``)."""
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need as many prompts as answers, at least one; got {len(prompts)} and {len(answers)}")
    pad = tokenizer.pad_id
    inputs, targets = [], []
    for p, a in zip(prompts, answers):
        seq = [tokenizer.bos_id, *p, sep_id, *a, tokenizer.eos_id]
        inputs.append(seq[:-1])
        targets.append([pad] * (len(p) + 1) + [*a, tokenizer.eos_id])
    return Batch(
        inputs=_padded(inputs, pad), targets=_padded(targets, pad),  # (B, T)
        lengths=None if lengths is None else torch.as_tensor(list(lengths), dtype=torch.long),
    )


def pad_seq2seq_examples(
    sources: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *, tokenizer: Any,
    lengths: Sequence[int] | None = None,
) -> Batch:
    """Encoder-decoder layout: source ``x EOS``; decoder input ``BOS y``; targets ``y EOS``."""
    if len(sources) != len(answers) or not sources:
        raise ValueError(f"need as many sources as answers, at least one; got {len(sources)} and {len(answers)}")
    pad, bos, eos = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    return Batch(
        src=_padded([[*s, eos] for s in sources], pad),  # (B, S)
        inputs=_padded([[bos, *a] for a in answers], pad),  # (B, T)
        targets=_padded([[*a, eos] for a in answers], pad),  # (B, T)
        lengths=None if lengths is None else torch.as_tensor(list(lengths), dtype=torch.long),
    )
