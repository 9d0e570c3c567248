"""A translation dataset: a parallel corpus, one joint BPE vocabulary, length filtering that is reported, batches
by tokens, and evaluation sets that keep the raw reference text for BLEU.

Layout of a batch (``posenc.data.batch.Batch``): ``src`` = source ids + EOS, padded; ``inputs`` = BOS + target
ids; ``targets`` = target ids + EOS; padding is ``pad_id`` everywhere (the loss ignores targets equal to it, the
model masks source keys equal to it).

Training pairs with either side longer than ``max_len`` tokens, or with an empty side, are skipped; the
``FilterReport`` says how many and which lines, and a warning names them, so that nothing is dropped silently.
Evaluation sets are never filtered: BLEU is computed on every line of the test set.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .batch import Batch
from .bpe import BPETokenizer
from .buckets import TokenBatcher
from .corpus import ParallelText, load_parallel

__all__ = ["EvalSet", "FilterReport", "TranslationConfig", "TranslationDataset", "collate_pairs"]


@dataclass
class TranslationConfig:
    """Where the data is and how it is cut. ``train`` and each ``eval`` entry: one TSV path or a pair of paths."""

    train: list[str]
    eval: dict[str, list[str]] = field(default_factory=dict)
    vocab_size: int = 8000
    max_len: int = 256  # tokens per side (before BOS/EOS); longer training pairs are skipped and reported
    max_tokens: int = 4096  # padded tokens per batch: batch size x longest (source or target) sequence
    seed: int = 0


@dataclass
class FilterReport:
    """Which training pairs were skipped and why (1-based line numbers of the corpus)."""

    origin: str
    total: int
    max_len: int
    too_long: list[int] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.total - len(self.too_long) - len(self.empty)

    def summary(self, show: int = 10) -> str:
        def lines(xs: list[int]) -> str:
            head = ", ".join(map(str, xs[:show]))
            return head + (f", ... ({len(xs) - show} more)" if len(xs) > show else "")

        parts = [f"{self.origin}: kept {self.kept} of {self.total} pairs"]
        if self.too_long:
            parts.append(f"skipped {len(self.too_long)} longer than {self.max_len} tokens (lines {lines(self.too_long)})")
        if self.empty:
            parts.append(f"skipped {len(self.empty)} with an empty side (lines {lines(self.empty)})")
        return "; ".join(parts)


def collate_pairs(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], *, pad_id: int, bos_id: int, eos_id: int) -> Batch:
    """Pad a list of (source ids, target ids) into a ``Batch``; EOS closes the source and the targets."""
    if len(src) != len(tgt) or not src:
        raise ValueError(f"need as many sources as targets, at least one; got {len(src)} and {len(tgt)}")
    s_len = max(len(s) for s in src) + 1
    t_len = max(len(t) for t in tgt) + 1
    s = torch.full((len(src), s_len), pad_id, dtype=torch.long)  # (B, S)
    inputs = torch.full((len(tgt), t_len), pad_id, dtype=torch.long)  # (B, T)
    targets = torch.full((len(tgt), t_len), pad_id, dtype=torch.long)  # (B, T)
    for b, (a, t) in enumerate(zip(src, tgt)):
        s[b, : len(a) + 1] = torch.tensor([*a, eos_id])
        inputs[b, : len(t) + 1] = torch.tensor([bos_id, *t])
        targets[b, : len(t) + 1] = torch.tensor([*t, eos_id])
    return Batch(inputs=inputs, targets=targets, src=s)


@dataclass
class EvalSet:
    """An evaluation corpus: raw source and reference lines (for BLEU) and their ids (for loss and decoding)."""

    name: str
    sources: list[str]
    references: list[str]
    src_ids: list[list[int]]
    tgt_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.sources)

    def index_batches(self, max_tokens: int) -> list[list[int]]:
        """Indices grouped by length (no shuffling), so that decoding wastes little on padding."""
        return TokenBatcher(
            src_lengths=[len(s) + 1 for s in self.src_ids], tgt_lengths=[len(t) + 1 for t in self.tgt_ids],
            max_tokens=max(max_tokens, max(len(s) + 1 for s in self.src_ids + self.tgt_ids)), shuffle=False,
        ).epoch(0)


class TranslationDataset:
    """Training batches and evaluation sets of one parallel corpus under one joint BPE vocabulary.

    Build it with ``TranslationDataset.build(config)`` (trains the tokenizer on the training source and target
    text) or pass an existing ``tokenizer`` (e.g. the one saved in a run directory, so ids stay the same).
    It has the trainer's dataset interface: ``model_kind``, ``tokenizer``, ``train_batches(start)``,
    ``eval_names()``, ``eval_batches(name)``, and ``extra_metrics`` (BLEU and chrF) and ``describe()``.
    """

    model_kind = "seq2seq"

    def __init__(self, *, config: TranslationConfig, tokenizer: BPETokenizer, train: ParallelText,
                 evals: dict[str, ParallelText]) -> None:
        self.config = config
        self.tokenizer = tokenizer
        src_ids, tgt_ids = tokenizer.encode_batch(train.src), tokenizer.encode_batch(train.tgt)
        self.report = FilterReport(origin=train.origin, total=len(train), max_len=config.max_len)
        keep = []
        for i, (a, b) in enumerate(zip(src_ids, tgt_ids)):
            if not a or not b:
                self.report.empty.append(i + 1)
            elif len(a) > config.max_len or len(b) > config.max_len:
                self.report.too_long.append(i + 1)
            else:
                keep.append(i)
        if not keep:
            raise ValueError(f"no training pair is left after filtering: {self.report.summary()}")
        if self.report.kept < self.report.total:
            warnings.warn(self.report.summary(), stacklevel=2)
        self.src_ids = [src_ids[i] for i in keep]
        self.tgt_ids = [tgt_ids[i] for i in keep]
        self.batcher = TokenBatcher(
            src_lengths=[len(a) + 1 for a in self.src_ids], tgt_lengths=[len(b) + 1 for b in self.tgt_ids],
            max_tokens=config.max_tokens, seed=config.seed,
        )
        self.eval_sets = {
            name: EvalSet(name=name, sources=p.src, references=p.tgt, src_ids=tokenizer.encode_batch(p.src),
                          tgt_ids=tokenizer.encode_batch(p.tgt))
            for name, p in evals.items()
        }

    @classmethod
    def build(cls, config: TranslationConfig, *, tokenizer: BPETokenizer | None = None) -> TranslationDataset:
        train = load_parallel(config.train)
        evals = {name: load_parallel(paths) for name, paths in config.eval.items()}
        if tokenizer is None:
            tokenizer = BPETokenizer.train(texts=train.src + train.tgt, vocab_size=config.vocab_size)
        return cls(config=config, tokenizer=tokenizer, train=train, evals=evals)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    def eval_names(self) -> list[str]:
        return list(self.eval_sets)

    def describe(self) -> str:
        return (f"{self.report.summary()}; joint BPE vocabulary {self.vocab_size}; "
                f"{self.batches_per_epoch()} batches of <= {self.config.max_tokens} tokens an epoch; "
                f"evaluation: {', '.join(f'{k} ({len(v)} lines)' for k, v in self.eval_sets.items()) or 'none'}")

    def extra_metrics(
        self, model: nn.Module, name: str, *, device: torch.device | str = "cpu",
        autocast: AbstractContextManager[Any] | None = None,
    ) -> dict[str, float]:
        """sacreBLEU BLEU and chrF of the model's greedy translations of every line of evaluation set ``name``."""
        from ..train.bleu import evaluate_translation  # the metrics build on this module, not the reverse

        scores, _ = evaluate_translation(model, self._eval_set(name), self.tokenizer, device=device,
                                         autocast=autocast, max_tokens=self.config.max_tokens)
        return {"bleu": scores.bleu, "chrf": scores.chrf}

    def batches_per_epoch(self) -> int:
        return len(self.batcher)

    def collate(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
        t = self.tokenizer
        return collate_pairs(src, tgt, pad_id=t.pad_id, bos_id=t.bos_id, eos_id=t.eos_id)

    def train_batches(self, start: int = 0) -> Iterator[Batch]:
        """Endless training batches from position ``start`` (batches consumed so far, across epochs)."""
        for _, idx in self.batcher.stream(start):
            yield self.collate([self.src_ids[i] for i in idx], [self.tgt_ids[i] for i in idx])

    def eval_batches(self, name: str, max_tokens: int | None = None) -> Iterator[Batch]:
        """Batches of an evaluation set for loss and perplexity (every line, in length order)."""
        es = self._eval_set(name)
        for idx in es.index_batches(max_tokens or self.config.max_tokens):
            yield self.collate([es.src_ids[i] for i in idx], [es.tgt_ids[i] for i in idx])

    def _eval_set(self, name: str) -> EvalSet:
        if name not in self.eval_sets:
            raise ValueError(f"no evaluation set {name!r}; have {', '.join(sorted(self.eval_sets)) or 'none'}")
        return self.eval_sets[name]
