"""Cached decoding equals uncached decoding for every registered encoding; the cache grows by doubling."""

import math

import pytest
import torch

from posenc.cache import GrowingBuffer, KVCache, StackCache
from posenc.encodings import PositionalEncoding, build, names
from posenc.models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig
from posenc.stacks import TransformerEncoder

# Options an encoding needs to fit these small models (everything else is built from the model's context).
SPEC_OPTIONS = {"learned": "learned:max_len=64"}
TOL = dict(atol=2e-5, rtol=1e-4)
V = 23


def spec(name: str) -> str:
    return SPEC_OPTIONS.get(name, name)


def length_dependent(stack) -> bool:
    return any(layer.self_attn.encoding.rotate_after_cache for layer in stack.layers)


def small_lm(encoding, num_layers: int = 2) -> LanguageModel:
    """A small causal LM. An encoding whose rotation depends on the current length (dynamic NTK) gets one
    layer: its cached keys are re-rotated at every step, which makes a layer exact, but a deeper layer's cached
    keys and values come from hidden states computed when the sequence was shorter, in any implementation."""
    cfg = LMConfig(vocab_size=V, d_model=32, num_heads=4, num_layers=num_layers, dim_feedforward=64, dropout=0.0,
                   encoding=encoding)
    model = LanguageModel(cfg).eval()
    return small_lm(encoding, 1) if num_layers > 1 and length_dependent(model.stack) else model


def small_s2s(encoding, num_layers: int = 2) -> Seq2Seq:
    """A small encoder-decoder (one decoder layer for a length-dependent encoding, see :func:`small_lm`).
    A causal-only encoding (xPos) serves the decoder, and the encoder gets none."""
    try:
        build(encoding, d_model=32, num_heads=4, head_dim=8, causal=False)
        enc_spec = encoding
    except ValueError as err:
        if "causal" not in str(err):
            raise
        enc_spec = "none"
    cfg = Seq2SeqConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=32, num_heads=4, num_encoder_layers=2,
                        num_decoder_layers=num_layers, dim_feedforward=64, dropout=0.0, encoding=enc_spec,
                        decoder_encoding=encoding)
    model = Seq2Seq(cfg).eval()
    return small_s2s(encoding, 1) if num_layers > 1 and length_dependent(model.decoder) else model


def left_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    pad = torch.ones(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = s
        pad[i, width - len(s):] = False
    return ids, pad


# Chunks fed after the left-padded prompt: single steps and a two-token chunk (a query shorter than the keys).
CHUNKS = [1, 1, 2, 1]


def check_lm_cached(model: LanguageModel) -> None:
    """Prompts of lengths 5, 2, 7 as one left-padded batch, then CHUNKS through the cache. A cached call that
    ends at token e must give, for its tokens, what an uncached forward of that sequence alone up to e gives."""
    torch.manual_seed(1)
    prompts = [torch.randint(1, V, (n,)) for n in (5, 2, 7)]
    more = torch.randint(1, V, (3, sum(CHUNKS)))
    ids, pad = left_pad(prompts)
    cache = model.new_cache()
    with torch.no_grad():
        first = model(ids, padding_mask=pad, cache=cache)  # (3, 7, V)
        steps, start = [], 0
        for n in CHUNKS:
            chunk = more[:, start : start + n]
            steps.append((start, n, model(chunk, padding_mask=torch.zeros_like(chunk, dtype=torch.bool), cache=cache)))
            start += n
        for i, p in enumerate(prompts):
            alone = model(p[None])[0]
            torch.testing.assert_close(first[i, ids.shape[1] - len(p):], alone, **TOL)
            full = torch.cat([p, more[i]])
            for s, n, got in steps:
                end = len(p) + s + n
                ref = model(full[None, :end])[0, end - n : end]
                torch.testing.assert_close(got[i], ref, **TOL)


def check_s2s_cached(model: Seq2Seq) -> None:
    """Sources of lengths 6, 3, 4 (right-padded) and target prefixes of lengths 3, 1, 2 (left-padded), then
    CHUNKS through the decoder cache, against each pair run alone and uncached."""
    torch.manual_seed(2)
    srcs = [torch.randint(1, V, (n,)) for n in (6, 3, 4)]
    src = torch.zeros(3, 6, dtype=torch.long)
    for i, s in enumerate(srcs):
        src[i, : len(s)] = s  # pad_id 0 on the right
    prefixes = [torch.randint(1, V, (n,)) for n in (3, 1, 2)]
    more = torch.randint(1, V, (3, sum(CHUNKS)))
    tgt, tpad = left_pad(prefixes)
    with torch.no_grad():
        memory, mpad = model.encode(src)
        cache = model.new_cache()
        first = model.decode(tgt, memory, mpad, tgt_padding_mask=tpad, cache=cache)
        steps, start = [], 0
        for n in CHUNKS:
            steps.append((start, n, model.decode(more[:, start : start + n], memory, mpad, cache=cache)))
            start += n
        for i, (s, p) in enumerate(zip(srcs, prefixes)):
            torch.testing.assert_close(first[i, tgt.shape[1] - len(p):], model(s[None], p[None])[0], **TOL)
            full = torch.cat([p, more[i]])
            for s0, n, got in steps:
                end = len(p) + s0 + n
                ref = model(s[None], full[None, :end])[0, end - n : end]
                torch.testing.assert_close(got[i], ref, **TOL)


@pytest.mark.parametrize("name", names())
def test_lm_cached_equals_uncached_every_encoding(name):
    check_lm_cached(small_lm(spec(name)))


@pytest.mark.parametrize("name", names())
def test_seq2seq_cached_equals_uncached_every_encoding(name):
    check_s2s_cached(small_s2s(spec(name)))


class LengthScaledTurn(PositionalEncoding):
    """A rotation whose angle depends on the current length, as dynamic NTK's does: pos * pi / L, where L is
    one more than each sequence's largest key position (per row, so a padded batch matches each row alone)."""

    def __init__(self, *, after_cache: bool) -> None:
        super().__init__()
        self.after_cache = after_cache

    @property
    def rotate_after_cache(self) -> bool:  # type: ignore[override]
        return self.after_cache

    def _turn(self, x: torch.Tensor, pos: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        angle = (pos.float() * math.pi / length)[:, None, :, None]  # (B, 1, T, 1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], -1).flatten(-2)

    def rotate(self, q, k, q_pos, k_pos):
        k_pos = k_pos.expand(k.shape[0], -1)
        length = k_pos.max(dim=-1, keepdim=True).values + 1.0  # (B, 1)
        return self._turn(q, q_pos.expand(q.shape[0], -1), length), self._turn(k, k_pos.expand(k.shape[0], -1), length)


def test_length_dependent_rotation_needs_keys_cached_before_rotation():
    """With ``rotate_after_cache`` the cache re-rotates every key with the current length: cached == uncached.
    Without it, keys keep the stale rotation they got when cached, and the check fails."""
    check_lm_cached(small_lm(LengthScaledTurn(after_cache=True)))
    check_s2s_cached(small_s2s(LengthScaledTurn(after_cache=True)))
    torch.manual_seed(0)
    with pytest.raises(AssertionError):
        check_lm_cached(small_lm(LengthScaledTurn(after_cache=False), 1))


@pytest.mark.parametrize("encoding", ["rope:scaling=dynamic,factor=4,original_max_len=4",
                                      "randomized:inner=(rope:scaling=dynamic,factor=2,original_max_len=3)"])
def test_dynamic_ntk_scales_each_sequence_by_its_own_length(encoding):
    """The real dynamic NTK past its trained length (4 or 3 here; prompts of up to 7 tokens and steps beyond): in a
    padded batch each row is rotated with its own length, so it matches the sequence alone (with the batch's
    longest length, as one shared scale would give, the short rows differed by ~4e-3)."""
    check_lm_cached(small_lm(encoding))
    check_s2s_cached(small_s2s(encoding))


def test_cross_attention_keys_and_values_computed_once():
    """After the first step the decoder never reads the memory again: garbage memory leaves the logits alone."""
    model = small_s2s("sinusoidal")
    src = torch.randint(1, V, (2, 5))
    tgt = torch.randint(1, V, (2, 4))
    with torch.no_grad():
        memory, mpad = model.encode(src)
        cache = model.new_cache()
        got = [model.decode(tgt[:, :1], memory, mpad, cache=cache)]
        cross = [layer.cross for layer in cache.layers]
        got += [model.decode(tgt[:, t : t + 1], torch.full_like(memory, 1e3), mpad, cache=cache) for t in range(1, 4)]
        assert all(layer.cross is c for layer, c in zip(cache.layers, cross))
        torch.testing.assert_close(torch.cat(got, 1), model(src, tgt), **TOL)


def test_kv_cache_grows_with_log_reallocations():
    cache = KVCache()
    total = 1000
    for t in range(total):
        k = torch.full((2, 3, 1, 4), float(t))
        keys, values = cache.append(k, -k)
    assert cache.length == total and keys.shape == (2, 3, total, 4)
    assert cache.reallocations <= math.ceil(math.log2(total / 16)) + 1
    torch.testing.assert_close(keys[0, 0, :, 0], torch.arange(total, dtype=torch.float))
    torch.testing.assert_close(values, -keys)


def test_stack_cache_reserve_allocates_once_and_reorder_keeps_rows():
    buf = GrowingBuffer(dim=1)
    buf.reserve(50)
    for t in range(50):
        buf.append(torch.tensor([[t], [100 + t]]))
    assert buf.reallocations == 1
    buf.select_rows(torch.tensor([1, 1, 0]))
    assert buf.view()[:, -1].tolist() == [149, 149, 49]
    stack = StackCache.empty(2, capacity=40)
    assert all(layer.self_kv.capacity == 0 for layer in stack.layers)  # sizes known at the first append
    stack.layers[0].self_kv.append(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    assert stack.layers[0].self_kv.capacity == 40


def test_reordered_cache_continues_like_the_reordered_batch():
    """Beam search reorders and repeats cache rows; continuing after that equals running those rows afresh."""
    model = small_lm("sinusoidal")
    prompts = [torch.randint(1, V, (n,)) for n in (4, 6)]
    ids, pad = left_pad(prompts)
    nxt = torch.randint(1, V, (3, 1))
    index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        cache = model.new_cache()
        model(ids, padding_mask=pad, cache=cache)
        cache.reorder(index)
        got = model(nxt, padding_mask=torch.zeros(3, 1, dtype=torch.bool), cache=cache)[:, -1]
        for row, i in enumerate(index.tolist()):
            ref = model(torch.cat([prompts[i], nxt[row]])[None])[0, -1]
            torch.testing.assert_close(got[row], ref, **TOL)


def test_a_float_key_padding_mask_with_a_cache_is_refused_not_dropped():
    """The cache records padding as bool; a float mask used to be dropped there (padded keys attended)."""
    stack = TransformerEncoder(d_model=16, nhead=2, num_layers=1, dim_feedforward=32, dropout=0.0,
                               positional_encoding="none", causal=True).eval()
    x = torch.randn(2, 4, 16)
    pad = torch.tensor([[True, True, False, False], [False] * 4])
    float_pad = torch.zeros(2, 4).masked_fill(pad, float("-inf"))
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"with a cache the key padding mask must be bool .*got torch.float32"):
            stack(x, src_key_padding_mask=float_pad, cache=stack.new_cache())
        cached = stack(x, src_key_padding_mask=float_pad.isneginf(), cache=stack.new_cache())
        torch.testing.assert_close(cached[0, 2:], stack(x, src_key_padding_mask=float_pad)[0, 2:], **TOL)


@pytest.mark.parametrize("encoding", ["sinusoidal", "rope", "alibi"])
def test_steps_without_positions_continue_from_an_explicitly_positioned_prompt(encoding):
    """After a prompt at positions 10, 11, 12 the next tokens are at 13, 14, 15 (they were at 3, 4, 5: the count
    of cached tokens), so cached decoding equals the uncached forward at positions 10..15."""
    stack = TransformerEncoder(d_model=16, nhead=2, num_layers=2, dim_feedforward=32, dropout=0.0,
                               positional_encoding=encoding, causal=True).eval()
    x, pos = torch.randn(2, 6, 16), torch.arange(10, 16)
    with torch.no_grad():
        cache = stack.new_cache()
        got = [stack(x[:, :3], positions=pos[:3], cache=cache)]
        got += [stack(x[:, t : t + 1], cache=cache) for t in range(3, 6)]
        assert cache.positions.tolist() == [list(range(10, 16))] * 2
        torch.testing.assert_close(torch.cat(got, 1), stack(x, positions=pos), **TOL)


def test_each_left_padded_row_continues_from_its_own_last_position():
    """Row 0 is two pads then tokens at 10, 11, 12; row 1 tokens at 20..24. Steps without positions (with an
    all-real padding mask or none) continue each row after its last real token and match the row alone."""
    stack = TransformerEncoder(d_model=16, nhead=2, num_layers=2, dim_feedforward=32, dropout=0.0,
                               positional_encoding="sinusoidal", causal=True).eval()
    x = torch.randn(2, 8, 16)
    pad = torch.tensor([[True, True, False, False, False], [False] * 5])
    pos = torch.tensor([[0, 0, 10, 11, 12], [20, 21, 22, 23, 24]])
    with torch.no_grad():
        cache = stack.new_cache()
        stack(x[:, :5], src_key_padding_mask=pad, positions=pos, cache=cache)
        steps = [stack(x[:, 5:6], src_key_padding_mask=torch.zeros(2, 1, dtype=torch.bool), cache=cache)]
        steps += [stack(x[:, t : t + 1], cache=cache) for t in (6, 7)]
        assert cache.positions[:, 5:].tolist() == [[13, 14, 15], [25, 26, 27]]
        for row, (first, start) in enumerate([(2, 10), (0, 20)]):
            alone = stack(x[row : row + 1, first:], positions=torch.arange(start, start + 8 - first))
            torch.testing.assert_close(torch.cat(steps, 1)[row], alone[0, -3:], **TOL)
