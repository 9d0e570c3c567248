import pytest
import torch

from posenc.encodings import T5Bias, build, relative_position_bucket
from posenc.models import LanguageModel, LMConfig

CAUSAL = {0: 0, 15: 15, 16: 16, 17: 16, 20: 17, 32: 21, 64: 26, 100: 30, 127: 31, 128: 31, 1000: 31}
BIDIRECTIONAL = {-1: 1, -8: 8, -12: 9, -16: 10, -32: 12, -64: 14, -127: 15, -500: 15, 1: 17, 8: 24, 128: 31}


def test_causal_bucket_vectors():
    d = torch.tensor(list(CAUSAL))
    got = relative_position_bucket(-d, bidirectional=False)  # rel = key - query = -distance
    assert got.tolist() == list(CAUSAL.values())


def test_bidirectional_bucket_vectors():
    rel = torch.tensor(list(BIDIRECTIONAL))
    assert relative_position_bucket(rel, bidirectional=True).tolist() == list(BIDIRECTIONAL.values())


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("nb", "md"), [(32, 128), (16, 64), (8, 20)])
def test_buckets_match_hf(bidirectional, nb, md):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :] - torch.arange(0, 3)[:, None]
    want = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
    got = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
    assert torch.equal(got, want)


def test_bias_is_table_lookup_and_gets_gradients():
    enc = T5Bias(num_heads=3, causal=True)
    b = enc.bias(torch.arange(40), torch.arange(40))
    assert b.shape == (3, 40, 40)
    torch.testing.assert_close(b[:, 39, 19], enc.weight[relative_position_bucket(torch.tensor(-20), bidirectional=False)])
    b.sum().backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0


def test_one_table_per_stack():
    lm = LanguageModel(LMConfig(vocab_size=11, d_model=16, num_heads=2, num_layers=3, encoding="t5"))
    encs = {id(layer.self_attn.encoding) for layer in lm.stack.layers}
    assert len(encs) == 1
    assert sum(1 for n, _ in lm.named_parameters() if "encoding" in n) == 1
    assert lm.stack.layers[0].self_attn.encoding.causal is True


def test_bad_options():
    with pytest.raises(ValueError, match="max_distance must exceed"):
        build("t5:max_distance=4", num_heads=2)
    for bad in ("-1", "nan"):  # a negative or NaN scale would draw a table of that scale or of NaN
        with pytest.raises(ValueError, match=f"init_std must be a finite number >= 0, got {bad}"):
            build(f"t5:init_std={bad}", num_heads=2)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("q0, tq, k0, tk", [(0, 7, 0, 7), (5, 1, 0, 6), (300, 4, 290, 14), (0, 200, 0, 200)])
def test_toeplitz_layout_equals_the_gather(causal, q0, tq, k0, tk):
    """Plain ranges take the per-distance Toeplitz path; it must equal the per-pair lookup, values and grads."""
    enc = T5Bias(num_heads=3, causal=causal)
    q_pos, k_pos = torch.arange(q0, q0 + tq), torch.arange(k0, k0 + tk)
    fast = enc.bias(q_pos, k_pos)
    slow = torch.nn.functional.embedding(enc.buckets(q_pos, k_pos), enc.weight).movedim(-1, -3)
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    g = torch.randn_like(fast)
    (grad_fast,) = torch.autograd.grad((fast * g).sum(), enc.weight)
    (grad_slow,) = torch.autograd.grad((slow * g).sum(), enc.weight)
    torch.testing.assert_close(grad_fast, grad_slow, rtol=1e-5, atol=1e-5)
