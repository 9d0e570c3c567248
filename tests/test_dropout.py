import pytest
import torch

from posenc import dropout
from posenc.dropout import FastDropout, fast_dropout, keep_mask, keep_product, quantized_p, random_words


def test_quantized_p_is_a_multiple_of_two_to_the_minus_16():
    assert quantized_p(0.1) == 6554 / 65536
    assert quantized_p(0.0) == 0.0 and quantized_p(0.5) == 0.5


def test_keep_rate_matches_one_minus_p_in_every_16_bit_lane():
    torch.manual_seed(1)
    p, n = 0.1, 400_000
    keep = keep_mask((n,), p).float()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(keep.mean().item() - (1 - quantized_p(p))) < 5 * sigma
    # The four 16-bit fields of each 64-bit word are all uniform (the top one too: full-range draws).
    lanes = keep.view(-1, 4).mean(0)
    torch.testing.assert_close(lanes, torch.full((4,), 1 - quantized_p(p)), atol=5 * 2 * sigma, rtol=0)


def test_mask_entries_are_independent_and_seeded():
    torch.manual_seed(2)
    p = 0.3
    keep = keep_mask((200_000,), p).float()
    both = (keep[:-1] * keep[1:]).mean().item()  # neighbours share a 64-bit word three times in four
    assert abs(both - (1 - p) ** 2) < 0.01
    torch.manual_seed(5)
    a = keep_mask((7, 9), p)
    torch.manual_seed(5)
    assert torch.equal(a, keep_mask((7, 9), p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_mask_in_a_floating_dtype_is_the_bool_mask_as_zeros_and_ones(dtype):
    for shape in [(7, 9), (5, 65_537)]:  # the second is drawn in two chunks of random words
        torch.manual_seed(11)
        keep = keep_mask(shape, 0.25)
        torch.manual_seed(11)
        ones = keep_mask(shape, 0.25, dtype=dtype)
        assert ones.dtype == dtype and ones.shape == shape
        assert torch.equal(ones, keep.to(dtype))


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_a_large_mask_is_the_random_words_halves_compared_whatever_the_thread_count(dtype, monkeypatch):
    """Past one chunk, the mask is compared chunk by chunk as its words are drawn: it must equal the halves of
    ``random_words`` under the same seed compared with the threshold, for any thread count."""
    monkeypatch.setattr(dropout, "_CHUNK_WORDS", 4096)
    n, p = 3 * 4 * 4096 + 5, 0.25  # four chunks, the last one partial
    torch.manual_seed(12)
    halves = random_words((n + 3) // 4).view(torch.int16)[:n]
    expected = (halves >= round(p * 65536) - 32768).to(dtype)
    previous = dropout.set_mask_threads(1)
    try:
        for t in (1, 2, 3):
            dropout.set_mask_threads(t)
            torch.manual_seed(12)
            mask = keep_mask((n,), p, dtype=dtype)
            assert mask.dtype == dtype and torch.equal(mask, expected)
    finally:
        dropout.set_mask_threads(previous)
    assert 0.74 < expected.float().mean().item() < 0.76


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("chunks", [False, True])
def test_keep_product_is_x_times_the_keep_mask_of_the_same_seed(dtype, chunks, monkeypatch):
    """A new tensor ``x * m``, m the mask keep_mask draws from the same generator state, whether the product is
    taken chunk by chunk on the threads (any thread count) or in one piece; ``x`` itself is left alone, and a
    transposed (non-contiguous) ``x`` gives the same values."""
    monkeypatch.setattr(dropout, "_CHUNK_WORDS", 1024)
    shape = (5, 4 * 1024 + 3) if chunks else (7, 33)  # five chunks, the last one partial; or under one chunk
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    before = x.clone()
    torch.manual_seed(4)
    expected = x * keep_mask(shape, 0.3, dtype=dtype)
    previous = dropout.set_mask_threads(1)
    try:
        for t in (1, 2, 3):
            dropout.set_mask_threads(t)
            torch.manual_seed(4)
            out = keep_product(x, 0.3)
            assert out.dtype == dtype and out.data_ptr() != x.data_ptr() and torch.equal(out, expected)
    finally:
        dropout.set_mask_threads(previous)
    assert torch.equal(x, before)
    torch.manual_seed(4)
    assert torch.equal(keep_product(x.t().contiguous().t(), 0.3), expected)
    assert abs((expected != 0).float().mean().item() - 0.7) < (0.1 if not chunks else 0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunks", [False, True])
def test_keep_product_on_non_finite_values_is_torchs_arithmetic(dtype, chunks, monkeypatch):
    """A kept inf, -inf or NaN stays; dropped, each gives NaN (inf * 0), in every path: bf16 chunks that hold
    one take float32, the others (here the first chunk) their bit patterns, with the same finite values."""
    monkeypatch.setattr(dropout, "_CHUNK_WORDS", 1024)
    special = torch.tensor([-float("inf"), -1.0, -0.0, 0.0, float("nan"), float("inf"), 2.0])
    n = 4 * 1024 * 3 if chunks else 700
    g = torch.Generator().manual_seed(0)
    finite = torch.randn(4096 if chunks else 0, generator=g)  # a whole first chunk without inf or NaN
    x = torch.cat([finite, special.repeat(n // 7 + 1)[:n]]).to(dtype)
    torch.manual_seed(5)
    expected = x.float() * keep_mask(x.shape, 0.5, dtype=torch.float32)  # exact: every value is x's or 0
    torch.manual_seed(5)
    out = keep_product(x, 0.5)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0, equal_nan=True)
    zeros = expected == 0  # assert_close takes -0.0 for +0.0: a dropped negative must give -0.0, as x * 0 does
    assert torch.equal(out.float()[zeros].signbit(), expected[zeros].signbit()) and expected[zeros].signbit().any()
    assert expected[len(finite):].isnan().sum() > expected[len(finite):].isinf().sum() > 0


def test_mask_threads_are_a_positive_int_and_the_previous_count_is_returned():
    import numpy as np

    previous = dropout.set_mask_threads(3)
    try:
        assert dropout.set_mask_threads(np.int64(2)) == 3
        for error, bad in ((ValueError, 0), (ValueError, -1), (TypeError, 1.5), (TypeError, True), (TypeError, "2")):
            with pytest.raises(error, match=f"got .*{bad!r}"):
                dropout.set_mask_threads(bad)
        assert dropout.set_mask_threads(1) == 2  # unchanged by the refusals
    finally:
        dropout.set_mask_threads(previous)


def test_keep_product_refuses_a_tensor_that_needs_a_gradient():
    x = torch.randn(8, 8, requires_grad=True)
    with pytest.raises(ValueError, match="not differentiable"):
        keep_product(x, 0.1)
    with torch.no_grad():
        assert keep_product(x, 0.1).requires_grad is False


def test_large_masks_are_drawn_in_chunks_the_same_for_any_thread_count(monkeypatch):
    """Past one chunk, each chunk has its own generator seeded from the default one: repeatable under a seed,
    independent of the number of threads drawing it, and the chunks are different streams with the right keep rate."""
    monkeypatch.setattr(dropout, "_CHUNK_WORDS", 4096)
    previous = dropout.set_mask_threads(1)
    try:
        words = {}
        for n in (1, 2, 3):
            dropout.set_mask_threads(n)
            torch.manual_seed(7)
            words[n] = random_words(5 * 4096 + 100)
    finally:
        dropout.set_mask_threads(previous)
    assert torch.equal(words[1], words[2]) and torch.equal(words[1], words[3])
    chunks = words[1].split(4096)
    assert len(chunks) == 6 and not torch.equal(chunks[0], chunks[1][:4096])
    torch.manual_seed(8)
    assert not torch.equal(random_words(5 * 4096 + 100), words[1])
    p, n = 0.1, 4 * 5 * 4096
    torch.manual_seed(9)
    keep = keep_mask((n,), p).float()
    sigma = (p * (1 - p) / (n / 5)) ** 0.5
    torch.testing.assert_close(keep.view(5, -1).mean(1), torch.full((5,), 1 - quantized_p(p)), atol=5 * sigma, rtol=0)


def test_fast_dropout_scales_the_kept_entries_forward_and_backward():
    x = torch.randn(6, 33, requires_grad=True)
    p = 0.25
    torch.manual_seed(3)
    y = fast_dropout(x, p)
    torch.manual_seed(3)
    keep = keep_mask(x.shape, p)
    scale = 1 / (1 - quantized_p(p))
    torch.testing.assert_close(y, x.detach() * keep * scale)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * keep * scale)


def test_fast_dropout_is_unbiased_on_average():
    torch.manual_seed(4)
    x = torch.ones(1000, 1000)
    assert abs(fast_dropout(x, 0.1).mean().item() - 1.0) < 5e-3


def test_identity_when_not_training_or_p_zero_and_dtype_kept():
    x = torch.randn(4, 5)
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert fast_dropout(x.bfloat16(), 0.1).dtype == torch.bfloat16


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_bad_probability(p):
    with pytest.raises(ValueError, match=f"dropout probability must lie in \\[0, 1\\], got {p}"):
        fast_dropout(torch.ones(3), p)


@pytest.mark.parametrize("p", [1.0, 0.999999, 1e-6])
def test_a_probability_beyond_the_16_bit_mask_is_torchs_dropout(p):
    """Within 2^-17 of 0 or 1 the mask would round p to 0 or 1: torch's dropout serves, as on the plain path."""
    x, y = torch.randn(400_000, requires_grad=True), torch.randn(400_000, requires_grad=True)
    torch.manual_seed(7)
    got = fast_dropout(x, p)
    torch.manual_seed(7)
    want = torch.nn.functional.dropout(y, p)
    if p == 1.0:
        assert torch.equal(got, torch.zeros_like(x))
    got.sum().backward()
    want.sum().backward()
    assert torch.equal(x.grad, y.grad)  # the same mask and scale
    assert torch.equal(got == 0, want == 0)
    if p == 1e-6:
        assert x.grad.max() > 1.0  # the kept entries scaled by 1 / (1 - p): dropout on, not rounded away


def test_module_follows_train_and_eval():
    m = FastDropout(0.5)
    x = torch.ones(1000)
    assert torch.equal(m.eval()(x), x)
    y = m.train()(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0} and 0.4 < (y == 0).float().mean().item() < 0.6
    assert m.state_dict() == {}
    with pytest.raises(ValueError, match="inplace"):
        FastDropout(0.1, inplace=True)(x)


def test_bf16_kept_entries_are_scaled_in_float_then_rounded():
    # A scale rounded to bf16 (1/0.9 -> 1.109) would bias every kept entry by -0.2%: it must act as a scalar.
    x = torch.randn(64, 257).bfloat16()
    p = 0.1
    torch.manual_seed(11)
    y = fast_dropout(x, p)
    torch.manual_seed(11)
    keep = keep_mask(x.shape, p)
    expected = (x.float() * keep * (1 / (1 - quantized_p(p)))).bfloat16()
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, expected)


def test_backward_is_the_same_mask_and_scale_gradcheck_and_bf16():
    def dropped(x):
        torch.manual_seed(5)  # the same mask at every call gradcheck makes
        return fast_dropout(x, 0.3)

    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dropped, (x,))
    xb = torch.randn(32, 129).bfloat16().requires_grad_()
    g = torch.randn(32, 129).bfloat16()
    dropped(xb).backward(g)
    torch.manual_seed(5)
    keep = keep_mask(xb.shape, 0.3)
    assert xb.grad.dtype == torch.bfloat16
    assert torch.equal(xb.grad, (g.float() * keep * (1 / (1 - quantized_p(0.3)))).bfloat16())


@pytest.mark.parametrize("n", [100, 1 << 20])  # one piece, and chunks
def test_p_at_the_limits_keeps_or_drops_everything_whatever_the_size(n):
    """p = 1 kept everything in a small mask and dropped everything in a chunked one (the int16 threshold wrapped)."""
    for p, want in ((0.0, 1.0), (1.0, 0.0), (1e-7, 1.0), (1 - 1e-7, 0.0)):
        assert float(keep_mask((n,), p, dtype=torch.float32).mean()) == want
        assert float(keep_product(torch.ones(n), p).mean()) == want
        assert float(dropout.relu_keep_(torch.ones(n), p).mean()) == want


@pytest.mark.parametrize("p", [1.5, -0.5, float("nan")])
def test_a_p_outside_0_1_is_named(p):
    for call in (lambda: keep_mask((4,), p), lambda: keep_product(torch.ones(4), p),
                 lambda: dropout.relu_keep_(torch.ones(4), p), lambda: dropout.keep_scale(p)):
        with pytest.raises(ValueError, match="the drop probability p must lie in"):
            call()
    with pytest.raises(ValueError, match="keep_scale: p=1.0 drops every entry"):
        dropout.keep_scale(1.0)


def test_a_p_that_is_no_number_is_a_type_error():
    with pytest.raises(TypeError, match="the drop probability p must be a real number, got Tensor"):
        keep_mask((4,), torch.tensor(0.1))
