from __future__ import annotations

import math

import pytest
import sacrebleu
import torch

from posenc.data.bpe import BPETokenizer
from posenc.data.translation import EvalSet
from posenc.models import Seq2Seq, Seq2SeqConfig
from posenc.train.bleu import evaluate_translation, greedy_decode, score_translations, translate

HYPS = ["the cat sat on the mat", "a dog is running in the park", "two men play football ."]
REFS = ["the cat sat on a mat", "a dog runs in the park", "two men are playing soccer ."]


def test_bleu_by_hand() -> None:
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (brevity penalty 1): BLEU = geometric mean (Papineni 2002)
    s = score_translations([HYPS[0]], [REFS[0]])
    assert s.bleu == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-9)
    assert score_translations(REFS, REFS).bleu == pytest.approx(100.0)


def test_matches_sacrebleu_corpus_functions() -> None:
    s = score_translations(HYPS, REFS)
    assert s.bleu == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-12)
    assert s.chrf == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-12)
    assert s.bleu_signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert s.chrf_signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert 0 < s.bleu < 100 and math.isfinite(s.chrf)
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        score_translations(HYPS, REFS[:2])


def _naive_greedy(model: Seq2Seq, src: torch.Tensor, bos: int, eos: int, steps: int) -> list[int]:
    """Greedy decoding that re-runs the whole decoder each step (no cache, one sentence)."""
    out = [bos]
    for _ in range(steps):
        nxt = int(model(src[None], torch.tensor([out]))[0, -1].argmax())
        if nxt == eos:
            break
        out.append(nxt)
    return out[1:]


@pytest.fixture
def model() -> Seq2Seq:
    torch.manual_seed(1)
    m = Seq2Seq(Seq2SeqConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, num_heads=2, dim_feedforward=64,
                              num_encoder_layers=2, num_decoder_layers=2, dropout=0.0))
    return m.eval()


def test_cached_greedy_matches_recomputing_greedy(model: Seq2Seq) -> None:
    src = torch.tensor([[5, 9, 11, 3, 2], [7, 8, 2, 0, 0]])
    got = greedy_decode(model, src, bos_id=1, eos_id=2, max_new_tokens=12)
    assert got[0] == _naive_greedy(model, src[0], 1, 2, 12)
    assert got[1] == _naive_greedy(model, src[1, :3], 1, 2, 12)  # padding does not change the result


def test_translate_restores_order_and_scores(model: Seq2Seq) -> None:
    tok = BPETokenizer.train(texts=["ab ba ab", "ba ab"], vocab_size=300)
    sources = ["ab", "ba ab ba ab ba", "", "ab ba"]
    es = EvalSet(name="t", sources=sources, references=["x"] * 4, src_ids=[], tgt_ids=[])
    es.src_ids = [[i % 40 for i in tok.encode(s)] for s in sources]  # fit the toy model's 40-id vocabulary
    es.tgt_ids = [[3]] * 4
    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    hyps = translate(model, es, decode_ids=decode, bos_id=1, eos_id=2, pad_id=0, max_tokens=8,
                     max_new_tokens=lambda s: 6)
    for s, h in zip(es.src_ids, hyps):
        assert h == decode(_naive_greedy(model, torch.tensor(s + [2]), 1, 2, 6))
    assert model.training is False


def test_evaluate_translation_of_a_perfect_model(model: Seq2Seq, monkeypatch) -> None:
    tok = BPETokenizer.train(texts=["a b"], vocab_size=300)
    es = EvalSet(name="t", sources=["a", "b"], references=["Ein Hund läuft im Park.", "A dog runs in the park."], src_ids=[[5], [6]], tgt_ids=[[], []])
    answers = {5: tok.encode("Ein Hund läuft im Park."), 6: tok.encode("A dog runs in the park.")}
    monkeypatch.setattr("posenc.train.bleu.greedy_decode",
                        lambda m, src, **kw: [answers[int(r[0])] for r in src])
    scores, hyps = evaluate_translation(model, es, tok)
    assert hyps == es.references and scores.bleu == pytest.approx(100.0) and scores.chrf == pytest.approx(100.0)
