import copy

import pytest
import torch
from torch import nn

from posenc import dropout
from posenc.dropout import FastDropout, keep_mask, keep_scale, relu_keep_
from posenc.fast import use_fast_path
from posenc.fused_feedforward import relu_dropout_feedforward
from posenc.layers import FeedForward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("chunks", [False, True])
def test_relu_keep_is_relu_times_the_keep_mask_of_the_same_seed(dtype, chunks, monkeypatch):
    """In place, relu(h) * m with m the mask keep_mask draws from the same generator state, whether the mask is
    drawn in chunks on the threads (any thread count) or in one piece."""
    monkeypatch.setattr(dropout, "_CHUNK_WORDS", 1024)
    shape = (5, 4 * 1024 + 3) if chunks else (7, 33)  # five chunks, the last one partial; or under one chunk
    h = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    torch.manual_seed(4)
    expected = h.clamp_min(0) * keep_mask(shape, 0.3, dtype=dtype)
    previous = dropout.set_mask_threads(1)
    try:
        for t in (1, 2, 3):
            dropout.set_mask_threads(t)
            torch.manual_seed(4)
            out = h.clone()
            assert relu_keep_(out, 0.3).data_ptr() == out.data_ptr()
            assert torch.equal(out, expected)
    finally:
        dropout.set_mask_threads(previous)
    kept = (expected > 0).sum().item() / (h > 0).sum().item()
    assert abs(kept - 0.7) < (0.1 if not chunks else 0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunks", [False, True])
def test_relu_keep_on_non_finite_values(dtype, chunks, monkeypatch):
    """torch's arithmetic in every path: -inf, -1, -0.0 and +0.0 become 0 whether kept or dropped; a kept NaN or
    +inf stays; dropped, they give NaN (inf * 0, NaN * 0). bf16 chunks with an inf or NaN take float32."""
    monkeypatch.setattr(dropout, "_CHUNK_WORDS", 1024)
    special = torch.tensor([-float("inf"), -1.0, -0.0, 0.0, float("nan"), float("inf"), 2.0])
    n = 4 * 1024 * 3 if chunks else 700
    h = special.repeat(n // 7 + 1)[:n].to(dtype)
    torch.manual_seed(5)
    keep = keep_mask(h.shape, 0.5, dtype=dtype)
    torch.manual_seed(5)
    out = relu_keep_(h.clone(), 0.5)
    kept, x = keep.bool(), h.float()
    finite = x.isfinite() | (x == -float("inf"))
    expected = torch.where(kept, x.clamp_min(0), 0.0)
    assert torch.equal(out.float()[finite], expected[finite])  # every finite entry, and -inf, exactly
    assert out.float()[kept & x.isnan()].isnan().all()
    assert (out.float()[kept & (x == float("inf"))] == float("inf")).all()
    dropped_special = ~kept & (x.isnan() | (x == float("inf")))
    assert dropped_special.any() and out.float()[dropped_special].isnan().all()
    if chunks:  # a chunk without inf or NaN next to it takes the bit-pattern path in bf16: the same values
        g = torch.Generator().manual_seed(0)
        h = torch.cat([torch.randn(4096, generator=g), special]).to(dtype)  # the first chunk finite, the last not
        torch.manual_seed(6)
        expected = h.float().clamp_min(0) * keep_mask(h.shape, 0.5, dtype=torch.float32)
        torch.manual_seed(6)
        torch.testing.assert_close(relu_keep_(h.clone(), 0.5).float(), expected, rtol=0, atol=0, equal_nan=True)


def test_relu_keep_refuses_a_tensor_that_needs_a_gradient():
    h = torch.randn(4, 1024 * 1024, requires_grad=True)
    with pytest.raises(ValueError, match="needs no gradient"):
        relu_keep_(h.clone(), 0.1)
    with torch.no_grad():
        y = h.clone()
        before = y._version
        relu_keep_(y, 0.1)
        assert y._version > before  # a copy saved for a backward would be seen as modified


def _blocks(bias=True, activation="relu", p=0.1):
    torch.manual_seed(0)
    ff = FeedForward(d_model=24, dim_feedforward=2048, dropout=p, activation=activation, bias=bias).train()
    fused = use_fast_path(copy.deepcopy(ff))
    unfused = use_fast_path(copy.deepcopy(ff))
    unfused.fast_dropout = False  # FastDropout after ReLU: the same mask, drawn and applied as its own module
    return unfused, fused


def _ran_fused(y) -> bool:
    """Whether the fused node made ``y`` (through the view that restores the leading dimensions)."""
    fn, seen = y.grad_fn, 0
    while fn is not None and seen < 3:
        if type(fn).__name__ == "_ReLUDropoutFFBackward":
            return True
        fn, seen = (fn.next_functions[0][0] if fn.next_functions else None), seen + 1
    return False


def _run(module, x, seed=5, autocast=False):
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, [x, *module.parameters()], g)
    return y, grads


@pytest.mark.parametrize("bias", [True, False])
def test_fused_block_computes_what_the_modules_compute(bias):
    """fp32: the same mask from the same seed; the outputs and every gradient equal the unfused block's up to
    where 1 / (1 - p) is applied (a rounding)."""
    unfused, fused = _blocks(bias=bias)
    x = torch.randn(3, 50, 24, requires_grad=True)  # 150 x 2048 hidden entries: several mask chunks
    (y0, g0), (y1, g1) = _run(unfused, x), _run(fused, x)
    assert y1.shape == y0.shape == x.shape and y1.dtype == torch.float32
    assert _ran_fused(y1) and not _ran_fused(y0)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    assert len(g1) == len(g0) == (5 if bias else 3)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    (y2, _) = _run(fused, x, seed=6)  # another seed, another mask
    assert not torch.allclose(y2, y1)


def test_fused_block_under_bf16_autocast_matches_to_bf16_rounding():
    unfused, fused = _blocks()
    x = torch.randn(3, 50, 24, requires_grad=True)
    (y0, g0), (y1, g1) = _run(unfused, x, autocast=True), _run(fused, x, autocast=True)
    assert y1.dtype == y0.dtype == torch.bfloat16
    assert _ran_fused(y1) and not _ran_fused(y0)
    assert [g.dtype for g in g1] == [g.dtype for g in g0] == [torch.float32] * 5
    torch.testing.assert_close(y1.float(), y0.float(), rtol=2e-2, atol=2e-2)
    for a, b in zip(g1, g0):  # relative to each gradient's size: bf16 keeps 8 bits
        assert (a - b).abs().max() <= 1e-2 * b.abs().max()


def test_float64_stays_float64_under_autocast_as_in_the_modules():
    unfused, fused = _blocks()
    unfused.double()
    fused.double()
    x = torch.randn(3, 50, 24, dtype=torch.float64, requires_grad=True)
    (y0, _), (y1, _) = _run(unfused, x, autocast=True), _run(fused, x, autocast=True)
    assert y0.dtype == y1.dtype == torch.float64 and _ran_fused(y1)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)


def test_fused_block_gradcheck_in_float64():
    torch.manual_seed(0)
    x, w1, b1 = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((4, 3, 5), (7, 5), (7,)))
    w2, b2 = torch.randn(5, 7, dtype=torch.float64, requires_grad=True), torch.randn(5, dtype=torch.float64,
                                                                                     requires_grad=True)

    def f(*args):
        torch.manual_seed(3)  # the same mask at every evaluation
        return relu_dropout_feedforward(*args, p=0.4)

    assert torch.autograd.gradcheck(f, (x, w1, b1, w2, b2))
    torch.manual_seed(3)
    m = keep_mask((12, 7), 0.4, dtype=torch.float64)
    h = (x.reshape(12, 5) @ w1.T + b1).clamp_min(0) * m * keep_scale(0.4)
    torch.testing.assert_close(f(x, w1, b1, w2, b2), (h @ w2.T + b2).reshape(4, 3, 5), rtol=1e-12, atol=1e-12)


def test_the_fused_block_keeps_one_hidden_tensor_for_the_backward():
    """The unfused block keeps ReLU's output, the mask and the dropped values, (N, F) each; the fused one the
    hidden values alone."""
    x = torch.randn(2, 8, 24, requires_grad=True)

    def hidden_saved(module):
        saved = []

        def pack(t):
            if t.shape[-1] == 2048 and t.numel() == 16 * 2048:
                saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return len({t.data_ptr() for t in saved})

    unfused, fused = _blocks()
    assert hidden_saved(fused) == 1
    assert hidden_saved(unfused) == 3


@pytest.mark.parametrize("case", ["gelu", "hook", "p0", "eval", "plain", "linear", "dropout_eval", "relu_hook",
                                  "backward_pre_hook", "global_hook", "dropout_subclass"])
def test_other_blocks_keep_the_modules_path(case, monkeypatch):
    """GELU, a hook on a part, no dropout, evaluation, the plain path, a linear module that is not nn.Linear: the
    fused node would not compute the same thing (or would bypass the hook), so the modules run."""
    unfused, fused = _blocks(activation="gelu" if case == "gelu" else "relu", p=0.0 if case == "p0" else 0.1)
    calls = []
    monkeypatch.setattr("posenc.layers.relu_dropout_feedforward", lambda *a, **k: calls.append(1))
    if case == "hook":
        fused.linear1.register_forward_hook(lambda *a: calls.append("hook"))
    elif case == "eval":
        fused.eval()
    elif case == "plain":
        use_fast_path(fused, enabled=False)
        use_fast_path(unfused, enabled=False)  # torch's dropout in both
    elif case == "linear":
        fused.linear2 = type("MyLinear", (nn.Linear,), {})(2048, 24)
    elif case == "dropout_eval":  # the block trains, its dropout does not: the modules do not drop
        fused.dropout.eval()
    elif case == "relu_hook":
        fused.activation = nn.ReLU()
        fused.activation.register_forward_hook(lambda *a: calls.append("hook"))
    elif case == "backward_pre_hook":
        fused.linear2.register_full_backward_pre_hook(lambda *a: None)
    elif case == "global_hook":
        handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
        monkeypatch.setattr(handle, "__del__", None, raising=False)
        calls_handle = handle
    elif case == "dropout_subclass":
        fused.dropout = type("MyDropout", (nn.Dropout,), {})(0.1)
    try:
        fused(torch.randn(2, 3, 24))
    finally:
        if case == "global_hook":
            calls_handle.remove()
    assert 1 not in calls
    assert calls == (["hook"] if case in ("hook", "relu_hook") else [])
    if case not in ("gelu", "p0", "eval", "plain"):
        return
    unfused.train(fused.training)
    x = torch.randn(2, 3, 24)
    torch.manual_seed(2)
    a = fused(x)
    torch.manual_seed(2)
    torch.testing.assert_close(a, unfused(x), rtol=0, atol=0)


def test_use_fast_path_switches_the_block_and_back():
    ff = FeedForward(d_model=8, dim_feedforward=16)
    use_fast_path(ff)
    assert ff.fast_dropout and type(ff.dropout) is FastDropout
    use_fast_path(ff, enabled=False)
    assert not ff.fast_dropout and type(ff.dropout) is nn.Dropout


@pytest.mark.parametrize("p", [0.0, 1.0, 1e-6])
def test_an_unrepresentable_probability_is_named(p):
    w = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=f"got {p}"):
        relu_dropout_feedforward(torch.zeros(1, 2), w, None, w, None, p=p)
