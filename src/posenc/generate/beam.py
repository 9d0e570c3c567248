"""Beam search with a length penalty, per-sequence finished state and the n best hypotheses.

Every sequence of the batch keeps ``beam_size`` live hypotheses (rows ``b*K .. b*K+K-1`` of the session). At
each step the ``2K`` best one-token extensions of a sequence's beams are ranked: an extension ending in EOS
that ranks among the first ``K`` becomes a finished hypothesis, the others fill the ``K`` live beams of the
next step (Wu et al. 2016, "Google's Neural Machine Translation System", section 7; the scheme fairseq and
Hugging Face use). A finished hypothesis of n tokens (EOS included) with summed log-probability L scores

    score = L / n ** length_penalty

so ``length_penalty=0`` ranks by L, ``1`` by the mean log-probability per token, values above 1 favour longer
outputs. A sequence is done when it holds ``K`` finished hypotheses and, unless ``early_stopping``, when no
live beam can still beat the worst of them: a live beam's L can only fall, so its best future score is
``L / max_len ** length_penalty`` for a positive penalty and ``L / (t+1) ** length_penalty`` otherwise (exact, not
a heuristic). Beams still live at ``max_new_tokens`` are finished as they are. With ``beam_size=1`` and early
stopping, the search is greedy decoding.

Legend: B sequences, K beams, V vocabulary.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from torch import Tensor

from .sampling import check_in_vocabulary
from .session import Session

__all__ = ["Hypothesis", "beam_loop"]


@dataclass(frozen=True)
class Hypothesis:
    """One finished output: its tokens (EOS excluded), its length-normalized score and its summed log-prob."""

    tokens: list[int]
    score: float
    log_prob: float


class _Finished:
    """The best ``k`` finished hypotheses of one sequence (a min-heap on score)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.heap: list[tuple[float, int, Hypothesis]] = []
        self._count = 0  # tie-breaker: earlier hypotheses win ties

    def add(self, hyp: Hypothesis) -> None:
        self._count += 1
        item = (hyp.score, -self._count, hyp)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    @property
    def full(self) -> bool:
        return len(self.heap) >= self.k

    @property
    def worst(self) -> float:
        return self.heap[0][0]

    def best(self, n: int) -> list[Hypothesis]:
        return [h for _, _, h in sorted(self.heap, reverse=True)[:n]]


def _normalized(log_prob: float, length: int, length_penalty: float) -> float:
    return log_prob / (length**length_penalty)


def _select(
    scores: list[float], rows: list[int], tokens: list[int], *, base: int, k: int, eos_id: int | None,
    history: list[list[int]], finished: _Finished, length: int, length_penalty: float,
) -> list[tuple[int, int, float]]:
    """One sequence's step: move EOS extensions among the first k to ``finished``; return k live beams
    as (row, token, log-prob), padded with dead beams (score -inf) when too few candidates are finite."""
    live: list[tuple[int, int, float]] = []
    for rank, (score, row, token) in enumerate(zip(scores, rows, tokens)):
        if score == float("-inf"):
            break  # candidates come sorted: the rest are impossible too
        if eos_id is not None and token == eos_id:
            if rank < k:
                norm = _normalized(score, length, length_penalty)
                finished.add(Hypothesis(tokens=list(history[base + row]), score=norm, log_prob=score))
            continue
        live.append((base + row, token, score))
        if len(live) == k:
            break
    while len(live) < k:
        live.append((base, eos_id if eos_id is not None else 0, float("-inf")))
    return live


def _done(
    finished: _Finished, best_live: float, *, early_stopping: bool, length: int, max_len: int, length_penalty: float
) -> bool:
    if not finished.full:
        return best_live == float("-inf")
    if early_stopping or best_live == float("-inf"):
        return True
    reach = max_len if length_penalty > 0 else length + 1
    return _normalized(best_live, reach, length_penalty) <= finished.worst


def beam_loop(
    session: Session, *, beam_size: int, max_new_tokens: int, eos_id: int | None, length_penalty: float = 1.0,
    early_stopping: bool = True, num_return: int = 1,
) -> list[list[Hypothesis]]:
    """Beam search over ``session``; for each sequence its ``num_return`` best hypotheses, best first."""
    k = beam_size
    logits = session.start()  # (B, V)
    check_in_vocabulary("eos_id", eos_id, logits)
    batch, device = logits.shape[0], logits.device
    session.reorder(torch.arange(batch, device=device).repeat_interleave(k), within_source=False)  # (B*K) rows
    beam_scores = torch.full((batch, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # one live beam a sequence to start with, so the K first ones differ
    beam_scores = beam_scores.view(-1)
    logits = logits.repeat_interleave(k, dim=0)  # (B*K, V)
    history: list[list[int]] = [[] for _ in range(batch * k)]
    finished = [_Finished(k) for _ in range(batch)]
    done = [False] * batch
    for t in range(max_new_tokens):
        vocab = logits.shape[-1]
        cand = (beam_scores[:, None] + torch.log_softmax(logits.float(), dim=-1)).view(batch, k * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=-1)  # (B, 2K)
        scores_l, idx_l = top_scores.tolist(), top_idx.tolist()
        chosen: list[tuple[int, int, float]] = []
        for b in range(batch):
            if done[b]:
                chosen.extend((b * k, eos_id if eos_id is not None else 0, float("-inf")) for _ in range(k))
                continue
            rows = [i // vocab for i in idx_l[b]]
            toks = [i % vocab for i in idx_l[b]]
            live = _select(
                scores_l[b], rows, toks, base=b * k, k=k, eos_id=eos_id, history=history, finished=finished[b],
                length=t + 1, length_penalty=length_penalty,
            )
            chosen.extend(live)
            done[b] = _done(
                finished[b], live[0][2], early_stopping=early_stopping, length=t + 1, max_len=max_new_tokens,
                length_penalty=length_penalty,
            )
        history = [history[row] + [tok] for row, tok, _ in chosen]
        if all(done) or t + 1 == max_new_tokens:
            break
        index = torch.tensor([row for row, _, _ in chosen], device=device)
        session.reorder(index, within_source=True)
        beam_scores = torch.tensor([s for _, _, s in chosen], device=device)
        logits = session.step(torch.tensor([tok for _, tok, _ in chosen], device=device))
    for b in range(batch):  # beams still live at the length limit finish as they are
        if done[b]:
            continue
        for j in range(k):
            score = chosen[b * k + j][2]
            if score != float("-inf"):
                hyp = history[b * k + j]
                norm = _normalized(score, len(hyp), length_penalty)
                finished[b].add(Hypothesis(tokens=hyp, score=norm, log_prob=score))
    return [f.best(num_return) for f in finished]
