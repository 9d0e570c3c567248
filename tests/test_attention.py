import math

import pytest
import torch

from posenc.attention import MultiHeadAttention, build_mask, causal_blocked, scaled_dot_product_attention
from posenc.cache import LayerCache
from posenc.encodings import build


def naive(q, k, v, blocked=None, added=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if added is not None:
        scores = scores + added
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    return torch.softmax(scores, -1) @ v


def qkv(b=2, h=3, tq=5, tk=5, d=8):
    return torch.randn(b, h, tq, d), torch.randn(b, h, tk, d), torch.randn(b, h, tk, d)


@pytest.mark.parametrize("math_path", [False, True])
def test_plain_matches_naive(math_path):
    q, k, v = qkv()
    out = scaled_dot_product_attention(q, k, v, math_path=math_path)
    torch.testing.assert_close(out, naive(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("math_path", [False, True])
def test_bool_mask_true_is_blocked_and_float_is_added(math_path):
    q, k, v = qkv()
    blocked = torch.rand(5, 5) < 0.3
    blocked[:, 0] = False
    out = scaled_dot_product_attention(q, k, v, mask=blocked, math_path=math_path)
    torch.testing.assert_close(out, naive(q, k, v, blocked=blocked), atol=1e-5, rtol=1e-5)
    added = torch.randn(5, 5)
    out = scaled_dot_product_attention(q, k, v, mask=added, math_path=math_path)
    torch.testing.assert_close(out, naive(q, k, v, added=added), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("math_path", [False, True])
def test_bias_is_added(math_path):
    q, k, v = qkv()
    bias = torch.randn(3, 5, 5)
    out = scaled_dot_product_attention(q, k, v, bias=bias, is_causal=True, math_path=math_path)
    want = naive(q, k, v, blocked=causal_blocked(5, 5), added=bias)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_causal_aligns_bottom_right_for_a_cache():
    q, k, v = qkv(tq=2, tk=6)
    out = scaled_dot_product_attention(q, k, v, is_causal=True)
    blocked = torch.tensor([[False] * 5 + [True], [False] * 6])
    torch.testing.assert_close(out, naive(q, k, v, blocked=blocked), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("math_path", [False, True])
def test_row_with_nothing_to_attend_gives_zeros_and_finite_grads(math_path):
    q, k, v = (t.requires_grad_() for t in qkv())
    blocked = torch.zeros(5, 5, dtype=torch.bool)
    blocked[2] = True  # query 2 sees nothing
    out = scaled_dot_product_attention(q, k, v, mask=blocked, math_path=math_path)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, 2], torch.zeros(2, 3, 8))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[:, :, 2].abs().sum() == 0


def test_float_mask_with_only_minus_inf_row_is_zero():
    q, k, v = qkv()
    m = torch.zeros(5, 5)
    m[4] = float("-inf")
    out = scaled_dot_product_attention(q, k, v, mask=m)
    torch.testing.assert_close(out[:, :, 4], torch.zeros(2, 3, 8))
    torch.testing.assert_close(out[:, :, :4], naive(q, k, v)[:, :, :4], atol=1e-5, rtol=1e-5)


def test_mask_conventions_in_build_mask():
    kpm = torch.tensor([[False, False, True], [False, True, True]])
    m = build_mask(None, kpm, batch=2, heads=4, q_len=3, k_len=3)
    assert m.blocked.shape == (2, 1, 1, 3)
    torch.testing.assert_close(m.blocked[:, 0, 0], kpm)
    m3 = build_mask(torch.zeros(8, 3, 3, dtype=torch.bool), None, batch=2, heads=4, q_len=3, k_len=3)
    assert m3.blocked.shape == (2, 4, 3, 3)
    assert build_mask(None, None, batch=2, heads=4, q_len=3, k_len=3) is None
    assert build_mask(None, None, causal=True, batch=2, heads=4, q_len=3, k_len=3).causal_only


@pytest.mark.parametrize(
    "mask, kpm, err, match",
    [
        (torch.zeros(3, 4, dtype=torch.bool), None, ValueError, r"must end in \(3, 3\)"),
        (torch.zeros(5, 3, 3, dtype=torch.bool), None, ValueError, "batch\\*heads"),
        (torch.zeros(3, 3, dtype=torch.long), None, TypeError, "bool .* or float"),
        (None, torch.zeros(2, 4, dtype=torch.bool), ValueError, r"key_padding_mask must be \(batch, keys\)"),
        (torch.zeros(3), None, ValueError, "dimensions"),
    ],
)
def test_bad_masks(mask, kpm, err, match):
    with pytest.raises(err, match=match):
        build_mask(mask, kpm, batch=2, heads=4, q_len=3, k_len=3)


def test_multihead_matches_torch():
    torch_mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    mha = MultiHeadAttention(d_model=16, num_heads=4)
    mha.in_proj.weight.data.copy_(torch_mha.in_proj_weight)
    mha.in_proj.bias.data.copy_(torch_mha.in_proj_bias)
    mha.out_proj.load_state_dict(torch_mha.out_proj.state_dict())
    x = torch.randn(2, 6, 16)
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    want, _ = torch_mha(x, x, x, key_padding_mask=kpm, need_weights=False)
    got = mha(x, mask=build_mask(None, kpm, batch=2, heads=4, q_len=6, k_len=6))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    mha.use_math = True
    torch.testing.assert_close(mha(x, mask=build_mask(None, kpm, batch=2, heads=4, q_len=6, k_len=6)), want, atol=1e-5, rtol=1e-5)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by num_heads=4"):
        MultiHeadAttention(d_model=10, num_heads=4)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_outside_zero_one_is_named(p):
    with pytest.raises(ValueError, match=f"dropout must lie in \\[0, 1\\], got {p}"):
        MultiHeadAttention(d_model=8, num_heads=2, dropout=p)


def test_math_path_keeps_float64_in_float64():
    q, k, v = (t.double() for t in qkv())
    out = scaled_dot_product_attention(q, k, v, math_path=True)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, naive(q, k, v), atol=1e-12, rtol=1e-12)  # fp32 softmax would miss by ~1e-8


def test_fast_dropout_path_equals_the_formula_with_the_same_mask():
    from posenc.attention import _attend
    from posenc.dropout import keep_mask, quantized_p

    q, k, v = (t.requires_grad_() for t in qkv(tq=6, tk=6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, -2:] = True
    for causal, kpm in ((True, None), (False, pad), (True, pad)):
        m = build_mask(None, kpm, causal=causal, batch=2, heads=3, q_len=6, k_len=6)
        torch.manual_seed(7)
        out, _ = _attend(q, k, v, m, None, dropout_p=0.3, scale=None, use_math=False, fast=True)
        blocked = causal_blocked(6, 6) if causal else torch.zeros(6, 6, dtype=torch.bool)
        if kpm is not None:
            blocked = blocked | kpm[:, None, None, :]
        weights = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(blocked, float("-inf")), -1)
        torch.manual_seed(7)
        keep = keep_mask(weights.shape, 0.3)
        want = (weights * keep / (1 - quantized_p(0.3))) @ v
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), g)
        torch.testing.assert_close(got, torch.autograd.grad(want, (q, k, v), g), atol=1e-5, rtol=1e-5)


def test_pure_causal_self_attention_hands_sdpa_is_causal_and_no_mask(monkeypatch):
    import torch.nn.functional as F

    from posenc.models import LanguageModel, LMConfig

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        seen.append((attn_mask, is_causal))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    lm = LanguageModel(LMConfig(vocab_size=20, d_model=16, num_heads=2, num_layers=2, dim_feedforward=32,
                                encoding="sinusoidal", dropout=0.0))
    lm(torch.randint(0, 20, (2, 9)))
    assert len(seen) == 2 and all(mask is None and causal for mask, causal in seen)


@pytest.mark.parametrize("q_len,k_len,padded", [(300, 300, False), (300, 300, True), (280, 290, False), (513, 513, False)])
def test_causal_float_mask_in_query_chunks_equals_one_call(monkeypatch, q_len, k_len, padded):
    # A causal mask with a bias goes to the fused kernel one chunk of queries at a time, each chunk with only
    # the keys up to its last query; the result must equal a single call over all keys, values and gradients.
    import posenc.attention as attention

    torch.manual_seed(0)
    b, h, dh = 2, 2, 8
    q, k, v = (torch.randn(b, h, n, dh) for n in (q_len, k_len, k_len))
    bias = torch.randn(h, q_len, k_len, requires_grad=True)
    pad = None
    if padded:
        pad = torch.zeros(b, k_len, dtype=torch.bool)
        pad[1, :7] = True  # left padding
    mask = build_mask(None, pad, causal=True, batch=b, heads=h, q_len=q_len, k_len=k_len)
    assert mask.causal

    def run(chunk: int):
        monkeypatch.setattr(attention, "CAUSAL_CHUNK", chunk)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        bias.grad = None
        out, _ = attention._attend(*leaves, mask, bias, dropout_p=0.0, scale=None, use_math=False)
        out.pow(2).sum().backward()
        return out, [t.grad for t in leaves] + [bias.grad.clone()]

    calls = []
    real = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out1, grads1 = run(10**9)
    assert len(calls) == 1
    out2, grads2 = run(128)
    assert len(calls) == 1 + math.ceil(q_len / 128)
    torch.testing.assert_close(out2, out1, atol=1e-5, rtol=1e-5)
    for g2, g1 in zip(grads2, grads1):
        torch.testing.assert_close(g2, g1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded,cached", [(False, 0), (True, 0), (False, 9)])
def test_value_term_encodings_attend_in_query_chunks_exactly(monkeypatch, padded, cached):
    # Shaw's value term needs the weights: causal attention runs the math path by chunks of queries over the
    # keys each chunk can see. Outputs and gradients must equal one pass over everything.
    import posenc.attention as attention
    from posenc.encodings import build

    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=16, num_heads=2, encoding=build("shaw:max_distance=3", head_dim=8))
    monkeypatch.setattr(attn.encoding, "causal_attention", lambda *a: None)  # the generic path, not Shaw's own
    tq = 40
    x = torch.randn(2, tq, 16)
    tk = tq + cached
    pad = None
    if padded:
        pad = torch.zeros(2, tk, dtype=torch.bool)
        pad[1, :5] = True
    mask = build_mask(None, pad, causal=True, batch=2, heads=2, q_len=tq, k_len=tk)
    q_pos = torch.arange(cached, tk)
    k_pos = torch.arange(tk)
    def run(chunk):
        monkeypatch.setattr(attention, "MATH_CHUNK", chunk)
        attn.zero_grad()
        xx = x.clone().requires_grad_()
        if cached:  # keys and values of earlier positions, as a cache holds them
            from posenc.cache import LayerCache

            cache = LayerCache()
            torch.manual_seed(1)
            attn(torch.randn(2, cached, 16), cache=cache, mask=build_mask(causal=True, batch=2, heads=2, q_len=cached, k_len=cached))
            out = attn(xx, mask=mask, q_pos=q_pos, k_pos=k_pos, cache=cache)
        else:
            out = attn(xx, mask=mask, q_pos=q_pos, k_pos=k_pos)
        out.pow(2).sum().backward()
        return out, [xx.grad] + [p.grad.clone() for p in attn.parameters()]

    calls = []
    real = MultiHeadAttention._attend_positions
    monkeypatch.setattr(MultiHeadAttention, "_attend_positions", lambda self, q, *a: calls.append(q.shape[-2]) or real(self, q, *a))
    out1, grads1 = run(10**9)
    assert calls[-1] == tq
    calls.clear()
    out2, grads2 = run(16)
    assert calls[-3:] == [16, 16, 8]
    torch.testing.assert_close(out2, out1, atol=1e-5, rtol=1e-5)
    for g2, g1 in zip(grads2, grads1):
        torch.testing.assert_close(g2, g1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["rope", "alibi", "xpos"])
def test_cached_steps_without_positions_equal_the_causal_call(spec):
    """Without positions a cached call's queries follow the cached keys, so decoding a two-token prompt and then
    token by token equals the causal call over the whole sequence (every step used to be taken as position 0)."""
    mha = MultiHeadAttention(d_model=16, num_heads=2, encoding=build(spec, num_heads=2, head_dim=8, causal=True))
    mha.eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        full = mha(x, mask=build_mask(causal=True, batch=2, heads=2, q_len=6, k_len=6))
        cache = LayerCache()
        steps = [mha(x[:, :2], mask=build_mask(causal=True, batch=2, heads=2, q_len=2, k_len=2), cache=cache)]
        steps += [mha(x[:, t : t + 1], cache=cache) for t in range(2, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_positions_that_do_not_match_the_queries_or_keys_are_named():
    """A wrong length used to fail inside the encoding with an unnamed shape error."""
    mha = MultiHeadAttention(d_model=16, num_heads=2, encoding=build("rope", head_dim=8))
    x = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match=r"q_pos holds 3 positions \(shape \(3,\)\) but the query length is 5"):
        mha(x, q_pos=torch.arange(3))
    cache = LayerCache()
    mha(x[:, :2], cache=cache)
    with pytest.raises(ValueError, match=r"k_pos holds 5 positions \(shape \(5,\)\) but there are 7 keys "
                                         r"\(2 cached \+ 5 new\)"):
        mha(x, q_pos=torch.arange(2, 7), k_pos=torch.arange(2, 7), cache=cache)  # the cached keys' are missing
    packed = MultiHeadAttention(d_model=16, num_heads=2, dropout=0.1).train()  # NoPE, training: the packed node
    packed.fast_dropout = True
    with pytest.raises(ValueError, match=r"q_pos holds 3 positions \(shape \(3,\)\) but the query length is 5"):
        packed(x, q_pos=torch.arange(3))


@pytest.mark.parametrize("num_heads, err, message", [
    (0, ValueError, "num_heads must be positive, got 0"),
    (-2, ValueError, "num_heads must be positive, got -2"),
    (2.0, TypeError, "num_heads must be an int, got float 2.0"),
])
def test_num_heads_must_be_a_positive_int(num_heads, err, message):
    """num_heads=0 used to be a ZeroDivisionError in the divisibility test."""
    with pytest.raises(err, match=message):
        MultiHeadAttention(d_model=8, num_heads=num_heads)


@pytest.mark.parametrize("spec", ["rope", "alibi", "none"])
def test_cached_steps_given_query_positions_only_equal_those_given_none(spec):
    """With q_pos alone the cached keys sit at 0 .. L-1: the same as decoding without positions (this raised,
    asking for k_pos, after the position checks came in; before them, ALiBi's distances were wrong)."""
    torch.manual_seed(0)
    kw = {"head_dim": 8} if spec == "rope" else {"num_heads": 2, "causal": True} if spec == "alibi" else {}
    mha = MultiHeadAttention(d_model=16, num_heads=2, encoding=build(spec, **kw)).eval()
    x = torch.randn(2, 5, 16)
    given, plain = LayerCache(), LayerCache()
    a = torch.cat([mha(x[:, t:t + 1], q_pos=torch.tensor([t]), cache=given) for t in range(5)], dim=1)
    b = torch.cat([mha(x[:, t:t + 1], cache=plain) for t in range(5)], dim=1)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
