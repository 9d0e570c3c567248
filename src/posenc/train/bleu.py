"""Translation quality: sacreBLEU's BLEU (Papineni et al. 2002) and chrF (Popović 2015) on detokenized text.

Why sacreBLEU (Post 2018): BLEU figures are only comparable when computed the same way — on detokenized output,
with the metric's own tokenizer, reported with its signature (``nrefs:1|case:mixed|eff:no|tok:13a|...``). So the
model's ids are decoded back to plain text by the BPE tokenizer, and the raw reference lines (never re-tokenized)
are the references.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from sacrebleu.metrics import BLEU, CHRF
from torch import Tensor

from ..data.tokenizers import Tokenizer
from ..data.translation import EvalSet
from ..models import Seq2Seq

__all__ = ["TranslationScores", "greedy_decode", "score_translations", "translate", "evaluate_translation"]


@dataclass
class TranslationScores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_detail: str  # sacreBLEU's one-line summary: n-gram precisions, brevity penalty, lengths

    def __str__(self) -> str:
        return f"BLEU {self.bleu:.2f} ({self.bleu_signature}), chrF {self.chrf:.2f} ({self.chrf_signature})"


def score_translations(hypotheses: Sequence[str], references: Sequence[str]) -> TranslationScores:
    """Corpus BLEU and chrF of detokenized ``hypotheses`` against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return TranslationScores(
        bleu=b.score, chrf=c.score, bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()), bleu_detail=str(b),
    )


def greedy_decode(
    model: Seq2Seq, src: Tensor, *, bos_id: int, eos_id: int, max_new_tokens: int
) -> list[list[int]]:
    """Greedy decoding over the KV cache: ``src`` (B, S, padded with the model's pad_id) -> for each row, the
    ids before its first EOS. A thin wrapper over :func:`posenc.generate.translate`."""
    from ..generate import translate as decode

    with torch.no_grad():
        return decode(model, src, bos_id=bos_id, eos_id=eos_id, max_len=max_new_tokens)


def translate(
    model: Seq2Seq,
    eval_set: EvalSet,
    *,
    decode_ids: Callable[[list[int]], str],
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_tokens: int = 4096,
    max_new_tokens: Callable[[int], int] = lambda s: 2 * s + 10,
    device: torch.device | str = "cpu",
    autocast: AbstractContextManager[Any] | None = None,
) -> list[str]:
    """Detokenized greedy translations of every source line of ``eval_set``, in the set's order.

    Lines are decoded in length-sorted batches; ``max_new_tokens(source length)`` bounds each batch's output;
    ``autocast`` (e.g. ``torch.autocast("cpu", dtype=torch.bfloat16)``) is entered around each batch.
    """
    was_training = model.training
    model.eval()
    hyps: list[str] = [""] * len(eval_set)
    try:
        for idx in eval_set.index_batches(max_tokens):
            rows = [eval_set.src_ids[i] + [eos_id] for i in idx]
            width = max(len(r) for r in rows)
            src = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, S)
            for b, r in enumerate(rows):
                src[b, : len(r)] = torch.tensor(r)
            with autocast if autocast is not None else nullcontext():
                out = greedy_decode(model, src.to(device), bos_id=bos_id, eos_id=eos_id,
                                    max_new_tokens=max_new_tokens(width))
            for i, ids in zip(idx, out):
                hyps[i] = decode_ids(ids)
    finally:
        model.train(was_training)
    return hyps


def evaluate_translation(
    model: Seq2Seq, eval_set: EvalSet, tokenizer: Tokenizer, **kwargs: Any
) -> tuple[TranslationScores, list[str]]:
    """BLEU and chrF of the model's greedy translations of ``eval_set`` (and the translations)."""
    hyps = translate(model, eval_set, decode_ids=tokenizer.decode, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                     pad_id=tokenizer.pad_id, **kwargs)
    return score_translations(hyps, eval_set.references), hyps
