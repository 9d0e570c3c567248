"""Greedy, sampling and beam search: against uncached decoding, a hand-built model, and known distributions."""

import itertools
import math

import pytest
import torch
from torch import nn

from posenc.cache import StackCache
from posenc.encodings import names
from posenc.generate import beam_search, filter_logits, generate, translate
from test_cache import V, small_lm, small_s2s, spec

PAD, EOS, A, B = 0, 1, 2, 3


class TableLM(nn.Module):
    """A hand-built language model: the next token's log-probs depend only on the current token, ``table[id]``.
    It has the interface generation uses (``forward(ids, *, padding_mask, cache)``, ``new_cache``)."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", probs.log())

    def forward(self, ids, *, positions=None, padding_mask=None, cache=None):
        return self.table[ids]  # (B, T, V)

    def new_cache(self) -> StackCache:
        return StackCache.empty(0)


def trap_model() -> TableLM:
    """From the start (PAD): A 0.6, B 0.4. From A: A 0.4, B 0.3, EOS 0.3. From B: EOS 0.9, A 0.05, B 0.05.
    Greedy takes A and then A forever; the most likely finished sequence is B EOS (0.36)."""
    probs = torch.tensor([
        [0.0, 0.0, 0.6, 0.4],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.3, 0.4, 0.3],
        [0.0, 0.9, 0.05, 0.05],
    ])
    return TableLM(probs + 1e-30)


def test_beam_finds_the_known_best_sequence_that_greedy_misses():
    model = trap_model()
    assert generate(model, [[PAD]], max_new_tokens=5, eos_id=EOS) == [[A] * 5]
    for penalty in (0.0, 1.0):
        (best,) = beam_search(model, [[PAD]], max_new_tokens=5, eos_id=EOS, beam_size=2, length_penalty=penalty)
        assert best[0].tokens == [B]
        assert best[0].log_prob == pytest.approx(math.log(0.4 * 0.9), rel=1e-6)
        assert best[0].score == pytest.approx(math.log(0.36) / 2**penalty, rel=1e-6)
    assert generate(model, [[PAD]], max_new_tokens=5, eos_id=EOS, strategy="beam", beam_size=2) == [[B]]


def brute_force_best(table: torch.Tensor, start: int, max_len: int, penalty: float) -> tuple[list[int], float]:
    """Every sequence that ends in EOS within max_len tokens, or runs max_len tokens without it."""
    best: tuple[list[int], float] = ([], -math.inf)
    others = [t for t in range(table.shape[0]) if t != EOS]
    for n in range(1, max_len + 1):
        for body in itertools.product(others, repeat=n - 1):
            for last in ([EOS] + others) if n == max_len else [EOS]:
                seq = list(body) + [last]
                prev, logp = start, 0.0
                for tok in seq:
                    logp, prev = logp + float(table[prev, tok]), tok
                score = logp / n**penalty
                if score > best[1]:
                    best = (seq[:-1] if last == EOS else seq, score)
    return best


def test_beam_as_wide_as_the_tree_is_exhaustive():
    """With a beam wider than every sequence there is, nothing is pruned: the best equals a brute-force search."""
    torch.manual_seed(3)
    model = TableLM(torch.softmax(torch.randn(4, 4) * 2, dim=-1))
    for penalty in (0.0, 1.0, 2.0):
        tokens, score = brute_force_best(model.table, PAD, 4, penalty)
        (hyps,) = beam_search(model, [[PAD]], max_new_tokens=4, eos_id=EOS, beam_size=64, length_penalty=penalty)
        assert hyps[0].tokens == tokens
        assert hyps[0].score == pytest.approx(score, rel=1e-5)


def test_beam_returns_n_best_sorted_with_consistent_scores():
    model = trap_model()
    (hyps,) = beam_search(model, [[PAD]], max_new_tokens=5, eos_id=EOS, beam_size=3, num_return=3, length_penalty=1.0)
    assert len(hyps) == 3
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for h in hyps:
        prev, logp = PAD, 0.0
        for tok in h.tokens + [EOS]:
            logp, prev = logp + float(model.table[prev, tok]), tok
        assert h.log_prob == pytest.approx(logp, rel=1e-5)
        assert h.score == pytest.approx(logp / (len(h.tokens) + 1), rel=1e-5)
    with pytest.raises(ValueError, match="num_return=4 cannot exceed beam_size=3"):
        beam_search(model, [[PAD]], max_new_tokens=5, eos_id=EOS, beam_size=3, num_return=4)


def test_eos_stops_one_sequence_while_others_continue():
    model = trap_model()
    out = generate(model, [[B], [A], [PAD, B]], max_new_tokens=4, eos_id=EOS)
    assert out == [[], [A] * 4, []]
    beams = beam_search(model, [[B], [A]], max_new_tokens=4, eos_id=EOS, beam_size=2)
    assert beams[0][0].tokens == [] and beams[0][0].log_prob == pytest.approx(math.log(0.9), rel=1e-6)
    assert beams[1][0].tokens == [B]  # A -> B -> EOS (0.27) beats A -> EOS (0.3) per token at penalty 1


def test_a_huge_max_new_tokens_allocates_only_what_generation_uses():
    """The cache reserves at most 1,024 new tokens up front and doubles past them: a budget of 10^12 tokens that
    ends at the first EOS allocates next to nothing (reserving it all would fail)."""
    lm, s2s = small_lm("rope"), small_s2s("sinusoidal")
    first = generate(lm, [[3, 4]], max_new_tokens=1)[0][0]  # what greedy emits first: make it the EOS
    assert generate(lm, [[3, 4]], max_new_tokens=10**12, eos_id=first) == [[]]
    first = translate(s2s, [[3, 4]], bos_id=1, eos_id=2, max_len=1)[0][0]
    assert translate(s2s, [[3, 4]], bos_id=1, eos_id=first, max_len=10**12) == [[]]


def test_sampling_matches_the_filtered_distribution():
    """Draws from the start row (A 0.6, B 0.4) at temperature 2: probabilities proportional to p ** (1/2)."""
    model = trap_model()
    n = 4000
    draws = generate(model, [[PAD]] * n, max_new_tokens=1, strategy="sample", temperature=2.0, seed=0)
    freq_a = sum(d == [A] for d in draws) / n
    expect = 0.6**0.5 / (0.6**0.5 + 0.4**0.5)
    assert abs(freq_a - expect) < 0.03  # binomial std is 0.008
    top1 = generate(model, [[PAD]] * 50, max_new_tokens=1, strategy="sample", top_p=0.5, seed=0)
    assert top1 == [[A]] * 50  # the nucleus of mass 0.5 is {A}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.0625, 0.5, 0.125, 0.25, 0.0625])  # exact in binary: no rounding at the borders
    logits = probs.log().repeat(2, 1)
    by_rank = [1, 3, 2]  # indices in decreasing probability
    for p, keep in [(0.3, 1), (0.5, 1), (0.6, 2), (0.75, 2), (0.8, 3), (0.875, 3), (0.9, 4)]:
        kept = torch.isfinite(filter_logits(logits, top_p=p))
        assert kept.sum(dim=-1).tolist() == [keep, keep], p
        assert kept[0, by_rank[: min(keep, 3)]].all()
        assert float(probs[kept[0]].sum()) >= p
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept[0].nonzero().flatten().tolist() == [1, 3]
    with pytest.raises(ValueError, match="top_p must lie in"):
        filter_logits(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be"):
        filter_logits(logits, top_k=0)


def assert_greedy(model, prompt: list[int], new: list[int], max_new: int, eos: int) -> None:
    """Each generated token is the argmax of an uncached forward over everything before it."""
    assert len(new) <= max_new
    seq = list(prompt)
    with torch.no_grad():
        for tok in new + ([eos] if len(new) < max_new else []):
            logits = model(torch.tensor([seq]))[0, -1]
            assert float(logits[tok]) >= float(logits.max()) - 1e-4
            seq.append(tok)


@pytest.mark.parametrize("name", names())
def test_lm_greedy_equals_uncached_greedy_every_encoding(name):
    model = small_lm(spec(name))
    prompts = [[3, 7, 9, 4, 11], [5], [8, 2, 6]]
    eos = 13
    outs = generate(model, prompts, max_new_tokens=6, eos_id=eos)
    for p, new in zip(prompts, outs):
        assert eos not in new
        assert_greedy(model, p, new, 6, eos)
    assert generate(model, prompts, max_new_tokens=6, eos_id=eos, strategy="beam", beam_size=1) == outs
    assert generate(model, prompts, max_new_tokens=6, eos_id=eos, strategy="sample", top_k=1, seed=5) == outs


@pytest.mark.parametrize("name", names())
def test_translate_greedy_equals_uncached_greedy_every_encoding(name):
    model = small_s2s(spec(name))
    srcs = [[4, 9, 2, 7, 7, 3], [5, 6], [8, 10, 12]]
    bos, eos = 1, 2
    outs = translate(model, srcs, bos_id=bos, eos_id=eos, max_len=6)
    with torch.no_grad():
        for s, new in zip(srcs, outs):
            tgt = [bos]
            for tok in new + ([eos] if len(new) < 6 else []):
                logits = model(torch.tensor([s]), torch.tensor([tgt]))[0, -1]
                assert float(logits[tok]) >= float(logits.max()) - 1e-4
                tgt.append(tok)
    assert translate(model, srcs, bos_id=bos, eos_id=eos, max_len=6, strategy="beam", beam_size=1) == outs


def test_seeded_sampling_is_reproducible():
    model = small_lm("sinusoidal")
    prompts = [[3, 7, 9], [5]]
    kw = dict(max_new_tokens=12, strategy="sample", temperature=1.5, top_k=10, top_p=0.95)
    a = generate(model, prompts, seed=7, **kw)
    assert a == generate(model, prompts, seed=7, **kw)
    assert a != generate(model, prompts, seed=8, **kw)
    s2s, src = small_s2s("sinusoidal"), [[4, 5, 6]]
    t = translate(s2s, src, bos_id=1, eos_id=2, max_len=10, strategy="sample", seed=3)
    assert t == translate(s2s, src, bos_id=1, eos_id=2, max_len=10, strategy="sample", seed=3)


def test_beam_translate_batches_sources_of_different_lengths():
    """A batch gives each source the hypotheses it gets alone."""
    model = small_s2s("sinusoidal")
    srcs = [[4, 9, 2, 7, 7, 3], [5, 6], [8, 10, 12]]
    together = beam_search(model, srcs, bos_id=1, eos_id=2, max_new_tokens=7, beam_size=3, num_return=2)
    for s, hyps in zip(srcs, together):
        (alone,) = beam_search(model, [s], bos_id=1, eos_id=2, max_new_tokens=7, beam_size=3, num_return=2)
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        for h, g in zip(hyps, alone):
            assert h.score == pytest.approx(g.score, abs=1e-4)


def test_bad_arguments_name_the_value():
    model = trap_model()
    with pytest.raises(ValueError, match="max_new_tokens must be positive, got 0"):
        generate(model, [[PAD]], max_new_tokens=0)
    with pytest.raises(ValueError, match="strategy must be one of"):
        generate(model, [[PAD]], max_new_tokens=2, strategy="nucleus")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0.0"):
        generate(model, [[PAD]], max_new_tokens=2, strategy="sample", temperature=0.0)
    # the options of a strategy not in use are checked too: a bad value is named, not ignored
    with pytest.raises(ValueError, match="top_p must lie in"):
        generate(model, [[PAD]], max_new_tokens=2, strategy="greedy", top_p=5.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -3"):
        generate(model, [[PAD]], max_new_tokens=2, strategy="beam", temperature=-3)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"length_penalty must be a finite number, got {bad}"):
            beam_search(model, [[PAD]], max_new_tokens=2, eos_id=EOS, length_penalty=bad)
        with pytest.raises(ValueError, match=f"length_penalty must be a finite number, got {bad}"):
            generate(model, [[PAD]], max_new_tokens=2, length_penalty=bad)
    # an EOS outside the vocabulary could never be produced (greedy ran to the end) or crashed the beam
    for strategy in ("greedy", "sample", "beam"):
        with pytest.raises(ValueError, match="eos_id=4 is not in the model's vocabulary of 4 tokens"):
            generate(model, [[PAD]], max_new_tokens=2, eos_id=4, strategy=strategy)
    with pytest.raises(ValueError, match="eos_id=9 is not in the model's vocabulary of 4 tokens"):
        beam_search(model, [[PAD]], max_new_tokens=2, eos_id=9, beam_size=4)
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        generate(model, [[PAD], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="bos_id must be a token id"):
        translate(small_s2s("none"), [[3]], bos_id=-1, eos_id=2, max_len=3)


@pytest.mark.parametrize("seed, error, message", [
    ("abc", TypeError, "seed must be an int or None, got str 'abc'"),
    (1.5, TypeError, "seed must be an int or None, got float 1.5"),
    (True, TypeError, "seed must be an int or None, got bool True"),
    (2**70, ValueError, r"seed must lie in \[-2\*\*63, 2\*\*64\), got 1180591620717411303424"),
    (-(2**63) - 1, ValueError, r"seed must lie in \[-2\*\*63, 2\*\*64\), got -9223372036854775809"),
])
@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_a_bad_seed_is_named_whatever_the_strategy(seed, error, message, strategy):
    """Greedy accepted any seed; sampling failed with torch's own errors."""
    with pytest.raises(error, match=message):
        generate(trap_model(), [[PAD]], max_new_tokens=2, strategy=strategy, seed=seed)
    with pytest.raises(error, match=message):
        translate(small_s2s("none"), [[3]], bos_id=1, eos_id=2, max_len=2, strategy=strategy, seed=seed)


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), -1])
def test_every_seed_torch_takes_is_accepted(seed):
    kw = dict(max_new_tokens=3, strategy="sample", seed=seed)
    assert generate(trap_model(), [[PAD]], **kw) == generate(trap_model(), [[PAD]], **kw)


def test_a_0d_tensor_option_and_a_generator_of_prompts_are_taken():
    """Both worked before the options' type checks; they still do."""
    model = small_lm("sinusoidal")
    kw = dict(max_new_tokens=3, strategy="sample", seed=1, top_p=0.9)
    want = generate(model, [[1, 2], [3]], temperature=0.7, **kw)
    assert generate(model, ([1, 2], [3]), temperature=torch.tensor(0.7), **kw) == want
    assert generate(model, (p for p in ([1, 2], [3])), temperature=0.7, **kw) == want


def test_one_generator_per_row_makes_draws_independent_of_the_batch():
    """With one generator per prompt, a prompt's samples are the same alone or batched with others, and identical
    prompts get different samples."""
    model = small_lm("sinusoidal")
    prompts = [[3, 7, 9], [5], [3, 7, 9]]
    kw = dict(max_new_tokens=10, strategy="sample", temperature=2.0)

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together = generate(model, prompts, generator=gens(11, 12, 13), **kw)
    alone = [generate(model, [p], generator=gens(s), **kw)[0] for p, s in zip(prompts, (11, 12, 13))]
    assert together == alone
    assert together[0] != together[2]
    one = torch.Generator().manual_seed(4)  # a single generator carries on across calls
    first, second = generate(model, [[5]], generator=one, **kw), generate(model, [[5]], generator=one, **kw)
    assert first != second
    with pytest.raises(ValueError, match="generator holds 2 generators for 3 sequences"):
        generate(model, prompts, generator=gens(1, 2), **kw)
    with pytest.raises(ValueError, match=r"give seed \(3\) or generator, not both"):
        generate(model, prompts, seed=3, generator=gens(1, 2, 3), **kw)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or a sequence of them, got int"):
        generate(model, prompts, generator=[1, 2, 3], **kw)
    s2s = small_s2s("sinusoidal")
    srcs = [[4, 5, 6], [7], [4, 5, 6]]
    both = translate(s2s, srcs, bos_id=1, eos_id=2, max_len=8, strategy="sample", generator=gens(1, 2, 3))
    assert both == [translate(s2s, [s], bos_id=1, eos_id=2, max_len=8, strategy="sample", generator=gens(g))[0]
                    for s, g in zip(srcs, (1, 2, 3))]


def test_a_temperature_that_overflows_the_logits_is_greedy():
    """1e-40 passed the check and then crashed inside torch.multinomial (logits / T overflowed to inf)."""
    model = small_lm("rope")
    prompts = [[3, 7, 9, 4], [5]]
    greedy = generate(model, prompts, max_new_tokens=6)
    for tiny in (1e-40, 1e-300):  # a float32 subnormal, and below float32's range
        assert generate(model, prompts, max_new_tokens=6, strategy="sample", temperature=tiny, seed=0) == greedy
    s2s = small_s2s("sinusoidal")
    want = translate(s2s, [[4, 5, 6]], bos_id=1, eos_id=2, max_len=6)
    assert translate(s2s, [[4, 5, 6]], bos_id=1, eos_id=2, max_len=6, strategy="sample", temperature=1e-40) == want


def test_a_huge_temperature_draws_uniformly_and_keeps_masked_tokens_out():
    """logits / 1e300 is 0 in float32 (uniform), and -inf / inf would be NaN: a masked token must stay masked."""
    from posenc.generate.sampling import sampler

    logits = torch.tensor([[0.0, 5.0, float("-inf"), -3.0]]).repeat(3000, 1)
    draws = sampler(temperature=1e300, generator=torch.Generator().manual_seed(0))(logits)
    counts = torch.bincount(draws, minlength=4).tolist()
    assert counts[2] == 0 and all(abs(c - 1000) < 100 for i, c in enumerate(counts) if i != 2)


@pytest.mark.parametrize("prompts, message", [
    ([1, 2, 3], r"prompts\[0\] must be a list of token ids, got int 1 \(wrap a single prompt: \[\[...\]\]\)"),
    (["abc"], r"prompts\[0\] must be a list of token ids, got str 'abc' \(encode text to token ids first\)"),
    ([[2], [1.7]], r"prompts\[1\]\[0\] must be an int token id, got float 1.7"),
    (7, "prompts must be a list of token-id lists or a 2-D tensor, got int 7"),
])
def test_prompts_of_the_wrong_shape_or_type_are_named(prompts, message):
    """A flat prompt failed with "'int' object is not iterable", a string with int()'s message, 1.7 became 1."""
    with pytest.raises(TypeError, match=message):
        generate(trap_model(), prompts, max_new_tokens=2)


def test_options_of_the_wrong_type_and_a_bos_outside_the_vocabulary_are_named():
    model, s2s = trap_model(), small_s2s("none")
    with pytest.raises(TypeError, match="temperature must be a real number, got str '1'"):
        generate(model, [[PAD]], max_new_tokens=2, strategy="sample", temperature="1")
    with pytest.raises(TypeError, match="top_p must be a real number, got str '0.9'"):
        generate(model, [[PAD]], max_new_tokens=2, strategy="sample", top_p="0.9")
    with pytest.raises(TypeError, match="length_penalty must be a real number, got str '1'"):
        generate(model, [[PAD]], max_new_tokens=2, strategy="beam", length_penalty="1")
    vocab = s2s.config.tgt_vocab_size
    for call in (lambda: translate(s2s, [[3]], bos_id=vocab, eos_id=2, max_len=3),
                 lambda: beam_search(s2s, [[3]], bos_id=vocab, eos_id=2, max_new_tokens=3)):
        with pytest.raises(ValueError, match=f"bos_id={vocab} is not in the model's target vocabulary of {vocab}"):
            call()  # it named the decoder's input, tgt
