import math

import pytest
import torch

from posenc.attention import MultiHeadAttention, build_mask, causal_blocked, scaled_dot_product_attention


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
