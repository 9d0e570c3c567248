import contextlib
import math

import pytest
import torch

from posenc.attention import MultiHeadAttention
from posenc import dropout
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


@pytest.mark.parametrize("chunks", [False, True])
def test_self_and_cross_attention_equal_the_formula_forward_and_backward(chunks, monkeypatch):
    """float64 against the written-out formula with the same mask draw; with ``chunks`` the weights are dropped
    chunk by chunk on the threads (a mask chunk of 64 entries here), as large weights are."""
    if chunks:
        monkeypatch.setattr(dropout, "_CHUNK_WORDS", 16)
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


@pytest.mark.parametrize("padded", [False, True])
def test_the_packed_node_computes_what_the_general_fast_path_computes(padded, monkeypatch):
    """The same model, step and dropout draws through the packed node and the general fast path, fp32: equal to
    rounding (the node applies 1/sqrt(Dh) and the dropout scale inside its products, the general path to Q and
    to the weights). bf16 is checked node by node below: a tiny random model's bf16 gradients move by up to ~15%
    of their largest entry under either rounding, so a model-level check could not tell a bug from noise."""
    src, tgt = torch.randint(1, 50, (3, 9)), torch.randint(1, 50, (3, 7))
    if padded:
        src[0, -3:], tgt[1, -2:] = 0, 0
    for d_model in (64, 32):
        m = model(d_model)
        packed = step(m, src, tgt, False)
        monkeypatch.setattr(MultiHeadAttention, "_packs", lambda *a: False)
        general = step(m, src, tgt, False)
        monkeypatch.undo()
        for a, b in zip(packed, general):
            torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=0)


@pytest.mark.parametrize("cross", [False, True])
def test_bf16_attention_equals_the_formula_to_bf16_rounding(cross, monkeypatch):
    """bf16 in, bf16 out: within a few bf16 steps of the float64 formula on the same (bf16) inputs and mask draw,
    forward and every gradient; the weights are dropped in chunks (64 entries each here). A wrong dropout scale
    (1.11) or a mask that missed the gradient would be off by ~10% of the largest entry."""
    monkeypatch.setattr(dropout, "_CHUNK_WORDS", 16)
    g = torch.Generator().manual_seed(0)
    b, t, s, d, h, p = 2, 6, 9, 32, 2, 0.2
    causal = torch.zeros(t, t).masked_fill_(torch.ones(t, t, dtype=torch.bool).triu(1), -float("inf"))
    x_q = torch.randn(b, t, (1 if cross else 3) * d, generator=g).bfloat16()
    x_kv = torch.randn(b, s, 2 * d, generator=g).bfloat16() if cross else None
    inputs = [x for x in (x_q, x_kv) if x is not None]
    mask = None if cross else causal
    torch.manual_seed(7)
    got = packed_attention(*[x.requires_grad_() for x in (x_q,)], x_kv.requires_grad_() if cross else None,
                           heads=h, mask=None if mask is None else mask.bfloat16(), p=p)
    exact = [x.detach().double().requires_grad_() for x in inputs]
    torch.manual_seed(7)
    want = reference(exact[0], exact[1] if cross else None, h, None if mask is None else mask.double(), p)
    grad = torch.randn(got.shape, generator=g)
    for a, e in zip((got,) + torch.autograd.grad(got, inputs, grad.bfloat16()),
                    (want,) + torch.autograd.grad(want, exact, grad.double())):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), e, atol=2e-2 * e.abs().max().item(), rtol=0)


@pytest.mark.parametrize("chunks", [False, True])
def test_the_node_keeps_the_weights_and_the_dropped_weights_but_no_mask(chunks, monkeypatch):
    """Two (B*H, Tq, Tk) tensors saved for the backward, not three: the mask is not kept."""
    if chunks:
        monkeypatch.setattr(dropout, "_CHUNK_WORDS", 16)
    x = torch.randn(2, 5, 3 * 12, requires_grad=True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        out = packed_attention(x, None, heads=2, mask=None, p=0.1)
    assert shapes.count((4, 5, 5)) == 2 and len(shapes) == 3  # the weights, the dropped weights, packed Q|K|V
    out.sum().backward()
    assert x.grad.abs().sum() > 0


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


def attention(packed: bool, *, dropout: float = 0.1, cross: bool = False) -> MultiHeadAttention:
    torch.manual_seed(0)
    m = use_fast_path(MultiHeadAttention(d_model=32, num_heads=2, dropout=dropout, cross=cross)).train()
    if not packed:
        m._packs = lambda *a: False  # the general fast path
    return m


def test_a_float_mask_that_wants_a_gradient_gets_it_from_the_general_path():
    from posenc.attention import build_mask

    grads = []
    for packed in (True, False):
        m = attention(packed)
        bias = torch.zeros(5, 5, requires_grad=True)
        mask = build_mask(bias, None, batch=2, heads=2, q_len=5, k_len=5)
        torch.manual_seed(1)
        out = m(torch.randn(2, 5, 32), mask=mask)
        grads.append(torch.autograd.grad(out.square().sum(), bias)[0])
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_second_derivatives_are_refused_with_a_clear_error():
    m = attention(True)
    x = torch.randn(2, 5, 32, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)  # first derivatives still work
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.square().sum().backward()


def test_a_memory_of_batch_one_is_broadcast_over_the_queries_as_on_the_general_path():
    x, memory = torch.randn(3, 5, 32), torch.randn(1, 7, 32)
    m = attention(True, cross=True)
    torch.manual_seed(2)
    broadcast = m(x, memory)  # a memory of batch one takes the general path
    torch.manual_seed(2)
    expanded = m(x, memory.expand(3, 7, 32))  # the packed node, the same dropout draws
    torch.testing.assert_close(broadcast, expanded, atol=1e-6, rtol=0)  # equal to rounding


@pytest.mark.parametrize("p", [1.0, 1 - 2**-18, 2**-18])
def test_a_drop_probability_beyond_the_16_bit_mask_leaves_the_packed_node(p):
    x = torch.randn(2, 5, 32)
    out = attention(True, dropout=p)(x)
    assert torch.isfinite(out).all()
    if p == 1.0:  # every weight dropped: only out_proj's bias remains, as on the plain path
        plain = MultiHeadAttention(d_model=32, num_heads=2, dropout=p).train()
        plain.load_state_dict(attention(False, dropout=p).state_dict())
        torch.testing.assert_close(out, plain(x))
        torch.testing.assert_close(out, plain.out_proj.bias.expand_as(out))
    with pytest.raises(ValueError, match=f"got {p}"):
        packed_attention(torch.randn(1, 2, 12), None, heads=2, mask=None, p=p)


def test_packed_attention_names_a_bool_mask_and_bad_shapes():
    x = torch.randn(2, 5, 12)
    with pytest.raises(ValueError, match="float mask.*torch.bool"):
        packed_attention(x, None, heads=2, mask=torch.ones(5, 5, dtype=torch.bool).triu(1), p=0.1)
    with pytest.raises(ValueError, match=r"heads=5, got shape \(2, 5, 12\)"):
        packed_attention(x, None, heads=5, mask=None, p=0.1)
    with pytest.raises(ValueError, match=r"x_kv must be .* got \(3, 7, 8\)"):
        packed_attention(torch.randn(2, 5, 4), torch.randn(3, 7, 8), heads=2, mask=None, p=0.1)
    for heads in (0, -2, 2.0):
        with pytest.raises(ValueError, match=f"heads must be a positive int, got {heads}"):
            packed_attention(x, None, heads=heads, mask=None, p=0.1)
    with pytest.raises(ValueError, match=r"a \(Tq, Tk\) or \(B\|1, H\|1, Tq, Tk\) mask, got shape \(2, 5, 5\)"):
        packed_attention(x, None, heads=2, mask=torch.zeros(2, 5, 5), p=0.1)  # (B, Tq, Tk) would meet the heads
