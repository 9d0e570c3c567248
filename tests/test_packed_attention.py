import contextlib
import math

import pytest
import torch

from posenc.attention import MultiHeadAttention
from posenc.dropout import keep_mask, quantized_p
from posenc.encodings import build
from posenc.fast import use_fast_path
from posenc.models import Seq2Seq, Seq2SeqConfig
from posenc.packed_attention import packed_attention


def reference(x_q, x_kv, heads, mask, p):
    """Multi-head attention with dropout on the weights, written out with the same mask draw."""
    if x_kv is None:
        x_q, x_kv = x_q.split([x_q.shape[-1] // 3, 2 * x_q.shape[-1] // 3], dim=-1)
    b, tq, d = x_q.shape
    dh = d // heads

    def heads_of(t):
        return t.reshape(b, t.shape[1], heads, dh).transpose(1, 2)  # (B, H, T, Dh)

    q, (k, v) = heads_of(x_q), (heads_of(t) for t in x_kv.split(d, dim=-1))
    scores = q @ k.transpose(-2, -1) / math.sqrt(dh)
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, -1)
    keep = keep_mask((b * heads, tq, k.shape[-2]), p, dtype=weights.dtype).view(weights.shape)
    out = (weights * keep / (1 - quantized_p(p))) @ v
    return out.transpose(1, 2).reshape(b, tq, d)


def test_self_and_cross_attention_equal_the_formula_forward_and_backward():
    torch.manual_seed(0)
    b, t, s, d, h, p = 2, 5, 7, 12, 3, 0.3
    causal = torch.zeros(t, t).masked_fill_(torch.ones(t, t, dtype=torch.bool).triu(1), -1e9)
    padding = torch.zeros(b, 1, 1, s)
    padding[1, ..., -3:] = -1e9
    cases = [(torch.randn(b, t, 3 * d, dtype=torch.float64), None, causal),
             (torch.randn(b, t, 3 * d, dtype=torch.float64), None, None),
             (torch.randn(b, t, d, dtype=torch.float64), torch.randn(b, s, 2 * d, dtype=torch.float64), padding)]
    for x_q, x_kv, mask in cases:
        inputs = (x_q.requires_grad_(),) + (() if x_kv is None else (x_kv.requires_grad_(),))
        mask = None if mask is None else mask.double()
        torch.manual_seed(3)
        got = packed_attention(x_q, x_kv, heads=h, mask=mask, p=p)
        torch.manual_seed(3)
        want = reference(x_q, x_kv, h, mask, p)
        torch.testing.assert_close(got, want)
        g = torch.randn_like(got)
        torch.testing.assert_close(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g))

        def seeded(*xs):
            torch.manual_seed(4)  # the same dropout mask on every call gradcheck makes
            return packed_attention(xs[0], xs[1] if len(xs) > 1 else None, heads=h, mask=mask, p=p)

        assert torch.autograd.gradcheck(seeded, inputs)


def model(d_model: int, encoding: str = "sinusoidal") -> Seq2Seq:
    torch.manual_seed(0)
    config = Seq2SeqConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=d_model, num_heads=4, num_encoder_layers=2,
                           num_decoder_layers=2, dim_feedforward=64, dropout=0.1, encoding=encoding, pad_id=0)
    return use_fast_path(Seq2Seq(config)).train()


def step(m: Seq2Seq, src, tgt, bf16: bool):
    m.zero_grad()
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        out = m(src, tgt)
    out.float().square().mean().backward()
    return [out.detach()] + [q.grad.clone() for q in m.parameters()]


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_the_packed_node_computes_what_the_general_fast_path_computes(bf16, padded, monkeypatch):
    """Same operations in the same order: bit for bit when 1/sqrt(Dh) is a power of two (Dh = 16), fp32 and bf16;
    otherwise fp32 to rounding (the scale is applied inside the product instead of to Q first). Not compared in
    bf16 then: a tiny random model's bf16 gradients move by up to ~15% of their largest entry under either
    rounding (both paths lie that far from the fp32 result), so such a check could not tell a bug from noise."""
    src, tgt = torch.randint(1, 50, (3, 9)), torch.randint(1, 50, (3, 7))
    if padded:
        src[0, -3:], tgt[1, -2:] = 0, 0
    for d_model in (64, 32) if not bf16 else (64,):
        m = model(d_model)
        packed = step(m, src, tgt, bf16)
        monkeypatch.setattr(MultiHeadAttention, "_packs", lambda *a: False)
        general = step(m, src, tgt, bf16)
        monkeypatch.undo()
        for a, b in zip(packed, general):
            if d_model == 64:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=0)


def test_only_calls_without_hooks_or_requests_on_the_weights_take_the_packed_node(monkeypatch):
    import posenc.attention as attention

    calls = []
    real = attention.packed_attention
    monkeypatch.setattr(attention, "packed_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    src, tgt = torch.randint(1, 50, (2, 6)), torch.randint(1, 50, (2, 5))
    m = model(32)
    m(src, tgt)
    assert len(calls) == 6  # 2 encoder self-, 2 decoder self-, 2 cross-attentions
    calls.clear()
    m.eval()(src, tgt)  # no dropout: the fused kernel
    assert calls == []
    calls.clear()
    model(32, "rope")(src, tgt)  # RoPE rotates Q and K inside attention: only the cross-attentions pack
    assert len(calls) == 2
    calls.clear()
    m = model(32).train()
    for mod in m.modules():
        if isinstance(mod, MultiHeadAttention):
            mod.capture_weights = True
    m(src, tgt)
    assert calls == []


def test_a_drop_probability_outside_the_open_interval_is_refused():
    x = torch.randn(1, 2, 12)
    for p in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=f"got {p}"):
            packed_attention(x, None, heads=2, mask=None, p=p)


def test_layer_rows_are_projected_by_the_rows_of_in_proj():
    attn = MultiHeadAttention(d_model=8, num_heads=2, cross=True, encoding=build("sinusoidal", d_model=8))
    x = torch.randn(1, 3, 8)
    torch.testing.assert_close(attn._rows(x, 8, 24), x @ attn.in_proj.weight[8:].T + attn.in_proj.bias[8:])
