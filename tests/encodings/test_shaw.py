import math

import pytest
import torch

from posenc import attention
from posenc.attention import MultiHeadAttention, build_mask
from posenc.encodings import Shaw, build
from posenc.encodings._shaw_banded import banded_causal_attention
from posenc.encodings.shaw import _Collect, _RangeLayout, _Spread


def _reference(
    attn: MultiHeadAttention, enc: Shaw, x: torch.Tensor, pos: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """Shaw et al. eq. 3-4, pair by pair."""
    b, t, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    q, k, v = attn.in_proj(x).split(d, dim=-1)
    q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
    out = torch.zeros(b, h, t, dh)
    kk = enc.max_distance
    for i in range(t):
        for bb in range(b):
            rel = (pos[bb] - pos[bb, i]).clamp(-kk, kk) + kk  # (T,)
            a_k = enc.key_table[rel]  # (T, Dh)
            a_v = enc.value_table[rel] if enc.value_table is not None else torch.zeros_like(a_k)
            e = torch.einsum("hd,jhd->hj", q[bb, :, i], k[bb].transpose(0, 1) + a_k[:, None]) / math.sqrt(dh)
            if causal:
                e[:, i + 1 :] = float("-inf")
            alpha = e.softmax(-1)  # (H, T)
            out[bb, :, i] = torch.einsum("hj,jhd->hd", alpha, v[bb].transpose(0, 1) + a_v[:, None])
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, d))


def test_matches_pairwise_reference():
    enc = Shaw(head_dim=8, max_distance=3, init_std=0.5)
    attn = MultiHeadAttention(d_model=16, num_heads=2, encoding=enc)
    x = torch.randn(2, 7, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 2, 3, 9, 10, 11, 30]])
    mask = build_mask(causal=True, batch=2, heads=2, q_len=7, k_len=7)
    got = attn(x, mask=mask, q_pos=pos)
    torch.testing.assert_close(got, _reference(attn, enc, x, pos), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_range_positions_match_pairwise_reference(causal):
    """Plain-range positions take the blockwise path; 40 tokens span two row blocks."""
    enc = Shaw(head_dim=8, max_distance=3, init_std=0.5)
    attn = MultiHeadAttention(d_model=16, num_heads=2, encoding=enc)
    x = torch.randn(2, 40, 16)
    pos = torch.arange(5, 45)
    mask = build_mask(causal=causal, batch=2, heads=2, q_len=40, k_len=40)
    got = attn(x, mask=mask, q_pos=pos)
    torch.testing.assert_close(got, _reference(attn, enc, x, pos.expand(2, 40), causal), atol=1e-5, rtol=1e-5)


# (length, k, values): the far keys through the fused kernel and the k near ones by hand, lengths that are and
# are not multiples of the strip block, shorter than k (no far keys), k = 1 (only the diagonal is near).
ROUTE_CASES = [(40, 3, True), (40, 3, False), (64, 4, True), (33, 1, True), (5, 16, True), (70, 32, False)]


@pytest.mark.parametrize("t, k, values", ROUTE_CASES)
def test_causal_inference_route_matches_pairwise_reference(t, k, values, monkeypatch):
    """In causal inference attention asks the encoding first, and Shaw's banded route is exact."""
    enc = Shaw(head_dim=8, max_distance=k, values=values, init_std=0.5)
    attn = MultiHeadAttention(d_model=16, num_heads=2, encoding=enc).eval()
    answers = []
    original = Shaw.causal_attention
    monkeypatch.setattr(Shaw, "causal_attention", lambda *a: answers.append(original(*a)) or answers[-1])
    x, pos = torch.randn(2, t, 16), torch.arange(7, 7 + t)
    mask = build_mask(causal=True, batch=2, heads=2, q_len=t, k_len=t)
    with torch.no_grad():
        got = attn(x, mask=mask, q_pos=pos)
        want = _reference(attn, enc, x, pos.expand(2, t))
    assert len(answers) == 1 and answers[0] is not None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_causal_inference_route_in_bf16_matches_the_generic_path():
    """bf16 with gradients declines the route (the fused kernel's bf16 backward is slow on CPU): the reference."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, num_heads=2, encoding=Shaw(head_dim=16, max_distance=4, init_std=0.5))
    attn = attn.eval().to(torch.bfloat16)
    x = torch.randn(2, 50, 32, dtype=torch.bfloat16)
    mask = build_mask(causal=True, batch=2, heads=2, q_len=50, k_len=50)
    with torch.no_grad():
        fast = attn(x, mask=mask)
    generic = attn(x, mask=mask)  # gradients enabled: the generic (chunked math) path
    torch.testing.assert_close(fast.float(), generic.float(), atol=0.02, rtol=0.02)


def test_causal_route_only_when_it_applies(monkeypatch):
    """Not asked with dropout, with padding or without a causal mask; declines batched positions, queries that
    are not the keys (a cache) and bf16 with gradients; the generic path then gives the result."""
    calls = []
    original = Shaw.causal_attention
    monkeypatch.setattr(Shaw, "causal_attention", lambda *a: calls.append(1) or original(*a))
    enc = Shaw(head_dim=8, max_distance=3)
    attn = MultiHeadAttention(d_model=16, num_heads=2, dropout=0.1, encoding=enc)
    x = torch.randn(2, 9, 16)
    causal = build_mask(causal=True, batch=2, heads=2, q_len=9, k_len=9)
    padded = build_mask(key_padding_mask=torch.tensor([[False] * 8 + [True]] * 2), causal=True, batch=2, heads=2,
                        q_len=9, k_len=9)
    attn.train()
    attn(x, mask=causal)  # dropout on the weights
    attn.eval()
    attn(x, mask=padded)
    attn(x, mask=build_mask(causal=False, batch=2, heads=2, q_len=9, k_len=9))
    assert calls == []
    q = k = v = torch.randn(2, 2, 9, 8)
    assert enc.causal_attention(q, k, v, torch.arange(9).expand(2, 9), torch.arange(9).expand(2, 9)) is None
    assert enc.causal_attention(q[:, :, :3], k, v, torch.arange(6, 9), torch.arange(9)) is None
    half = q.bfloat16()
    assert enc.causal_attention(half, half, half, torch.arange(9), torch.arange(9)) is None  # gradients enabled
    with torch.no_grad():
        assert enc.causal_attention(half, half, half, torch.arange(9), torch.arange(9)) is not None


# (length, k, values): blocks of 32 rows and more, T < k, k = 1, and k - 1 larger than a block of rows.
GRAD_CASES = [(12, 3, True), (12, 3, False), (40, 2, True), (5, 8, True), (9, 1, True), (45, 40, True)]


@pytest.mark.parametrize("t, k, values", GRAD_CASES)
def test_banded_attention_gradients(t, k, values):
    """The hand-written backward (the fused kernel's for far keys, the band by hand) against finite differences."""
    torch.manual_seed(0)
    q, key, v = (torch.randn(1, 2, t, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    key_table = torch.randn(2 * k + 1, 3, dtype=torch.float64, requires_grad=True)
    value_table = torch.randn(2 * k + 1, 3, dtype=torch.float64, requires_grad=True) if values else None
    inputs = (q, key, v, key_table) + ((value_table,) if values else ())

    def fn(*xs):
        return banded_causal_attention(*xs[:4], xs[4] if values else None, k)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=t > 20)


def test_training_takes_the_banded_route_with_the_generic_paths_gradients(monkeypatch):
    """Without dropout, training (fp32) goes through the banded attention; values and gradients of the input and
    every parameter equal the math path's."""
    torch.manual_seed(0)
    enc = Shaw(head_dim=16, max_distance=4, init_std=0.5)
    attn = MultiHeadAttention(d_model=32, num_heads=2, encoding=enc).train()
    x = torch.randn(2, 70, 32, requires_grad=True)
    mask = build_mask(causal=True, batch=2, heads=2, q_len=70, k_len=70)
    answers = []
    original = Shaw.causal_attention
    monkeypatch.setattr(Shaw, "causal_attention", lambda *a: answers.append(original(*a)) or answers[-1])
    out = attn(x, mask=mask)
    assert len(answers) == 1 and answers[0] is not None
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *attn.parameters()], g)
    attn.use_math = True
    want = attn(x, mask=mask)
    want_grads = torch.autograd.grad(want, [x, *attn.parameters()], g)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def _weights(b: int, h: int, tq: int, tk: int, causal: bool) -> torch.Tensor:
    """Attention weights with the queries as the last tq keys; one dead row (all zero) when causal."""
    scores = torch.randn(b, h, tq, tk)
    if causal:
        blocked = attention.causal_blocked(tq, tk)
        scores = scores.masked_fill(blocked, float("-inf"))
    w = scores.softmax(-1).nan_to_num(0.0)  # queries with every key blocked (tq > tk) attend to nothing
    if causal:
        w[0, 0, 0] = 0.0  # a query that may attend to nothing gives zero weights
    return w


# (query start, queries, key start, keys, k): one KV-cache step and a chunk of new queries after cached keys,
# keys starting elsewhere than the queries, k larger than every distance, k = 1, blocks of rows cut short.
CASES = [
    (0, 70, 0, 70, 4),
    (50, 20, 0, 70, 5),
    (69, 1, 0, 70, 4),
    (3, 40, 10, 45, 6),
    (10, 40, 0, 30, 3),
    (0, 20, 0, 20, 50),
    (0, 65, 0, 65, 1),
]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("q0", "tq", "k0", "tk", "k"), CASES)
def test_range_path_equals_general_path(q0, tq, k0, tk, k, causal):
    """The blockwise layout of plain ranges against the gather / scatter-add of the same positions given per
    batch row (which never counts as a range): forward and gradients, element by element (float64, so that the
    only difference, the order of the sums, stays far below the tolerance)."""
    b, h, dh = 2, 3, 8
    enc = Shaw(head_dim=dh, max_distance=k, init_std=0.5).double()
    q_pos, k_pos = torch.arange(q0, q0 + tq), torch.arange(k0, k0 + tk)
    general = (q_pos.expand(b, tq), k_pos.expand(b, tk))
    assert enc._layout(q_pos, k_pos) is not None and enc._layout(*general) is None
    q = torch.randn(b, h, tq, dh, dtype=torch.float64, requires_grad=True)
    w = _weights(b, h, tq, tk, causal).double().requires_grad_()
    grad_bias = torch.randn(b, h, tq, tk, dtype=torch.float64)
    grad_value = torch.randn(b, h, tq, dh, dtype=torch.float64)
    params = (q, w, enc.key_table, enc.value_table)

    def run(qp, kp):
        bias, value = enc.content_bias(q, qp, kp), enc.value_term(w, qp, kp)
        grads = torch.autograd.grad((bias * grad_bias).sum() + (value * grad_value).sum(), params)
        return bias, value, grads

    bias, value, grads = run(q_pos, k_pos)
    bias_ref, value_ref, grads_ref = run(*general)
    assert torch.equal(bias, bias_ref)  # a copy of the same per-bucket values
    torch.testing.assert_close(value, value_ref, atol=1e-12, rtol=1e-12)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # And the general path against the definition: bucket of each pair, weight mass per bucket.
    idx = (k_pos[None] - q_pos[:, None]).clamp(-k, k) + k  # (Tq, Tk)
    per_bucket = q @ enc.key_table.t() / math.sqrt(dh)
    torch.testing.assert_close(bias_ref, per_bucket[:, :, torch.arange(tq)[:, None], idx])
    mass = torch.stack([(w * (idx == r)).sum(-1) for r in range(2 * k + 1)], dim=-1)  # (B, H, Tq, R)
    torch.testing.assert_close(value_ref, mass @ enc.value_table)


def test_spread_and_collect_are_adjoint_with_second_derivatives():
    layout = _RangeLayout(index=(torch.arange(3, 11)[None] - torch.arange(36)[:, None]).clamp(-2, 2) + 2,
                          offset=3, max_distance=2)
    x = torch.randn(1, 2, 36, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 2, 36, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _Spread.apply(t, layout), (x,))
    assert torch.autograd.gradgradcheck(lambda t: _Spread.apply(t, layout), (x,))
    assert torch.autograd.gradcheck(lambda t: _Collect.apply(t, layout), (y,))
    assert torch.autograd.gradgradcheck(lambda t: _Collect.apply(t, layout), (y,))
    # <spread(x), y> == <x, collect(y)>
    lhs = (_Spread.apply(x, layout) * y).sum()
    rhs = (x * _Collect.apply(y, layout)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_keys_only_keeps_the_fused_path(monkeypatch):
    """``values=False`` needs no attention weights, so attention never takes its math path (a padded causal mask:
    the generic path, not Shaw's own causal attention)."""
    calls = []
    original = attention._math_attention
    monkeypatch.setattr(attention, "_math_attention", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    x = torch.randn(2, 9, 16)
    mask = build_mask(key_padding_mask=torch.tensor([[False] * 9, [False] * 7 + [True] * 2]), causal=True, batch=2,
                      heads=2, q_len=9, k_len=9)
    keys_only = MultiHeadAttention(d_model=16, num_heads=2, encoding=Shaw(head_dim=8, values=False))
    keys_only(x, mask=mask).sum().backward()
    assert not keys_only.encoding.uses_value_term and calls == []
    both = MultiHeadAttention(d_model=16, num_heads=2, encoding=Shaw(head_dim=8))
    both(x, mask=mask)
    assert both.encoding.uses_value_term and calls == [1]


def test_clipping_and_gradients():
    enc = build("shaw:max_distance=2", head_dim=4)
    idx = enc.index(torch.arange(6), torch.arange(6))
    assert idx[5].tolist() == [0, 0, 0, 0, 1, 2] and idx[0].tolist() == [2, 3, 4, 4, 4, 4]
    attn = MultiHeadAttention(d_model=8, num_heads=2, encoding=enc)
    attn(torch.randn(1, 6, 8)).sum().backward()
    assert enc.key_table.grad.abs().sum() > 0 and enc.value_table.grad.abs().sum() > 0


def test_keys_only_option():
    enc = Shaw(head_dim=4, values=False)
    assert enc.value_table is None
    assert enc.value_term(torch.rand(1, 1, 3, 3), torch.arange(3), torch.arange(3)) is None


@pytest.mark.parametrize("bad", ["-1", "inf"])
def test_a_bad_init_std_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match=f"init_std must be a finite number >= 0, got {bad}"):
        build(f"shaw:init_std={bad}", head_dim=8)
