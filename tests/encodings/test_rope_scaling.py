import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from posenc.attention import MultiHeadAttention
from posenc.encodings import RoPE
from posenc.encodings.rope_scaling import (
    dynamic_base,
    inverse_frequencies,
    ntk_base,
    plain_inverse_frequencies,
    yarn_mscale,
)

HEAD_DIM = 64


def _hf_config(rope_type: str, **params) -> LlamaConfig:
    rope = {"rope_type": rope_type, "rope_theta": params.pop("rope_theta", 10000.0), **params}
    return LlamaConfig(hidden_size=4 * HEAD_DIM, num_attention_heads=4, max_position_embeddings=params.get(
        "original_max_position_embeddings", 2048), rope_parameters=rope)


def test_plain_matches_hf_default():
    cfg = _hf_config("default", rope_theta=500000.0)
    want, scale = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    got, mscale = inverse_frequencies(HEAD_DIM, base=500000.0)
    torch.testing.assert_close(got.float(), want, rtol=1e-6, atol=0)
    assert mscale == scale == 1.0


def test_cos_sin_match_hf_default():
    cfg = _hf_config("default")
    pos = torch.tensor([[0, 1, 5, 511, 4000]])
    cos, sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1, 5, HEAD_DIM), pos)
    mine_cos, mine_sin = RoPE(head_dim=HEAD_DIM, layout="half").cos_sin(pos[0])
    # Hugging Face forms the angle in float32, posenc in float64: at position 4000 float32 is off by ~1e-4.
    atol = torch.tensor([2e-5, 2e-5, 2e-5, 2e-5, 5e-4])[:, None]
    assert ((torch.cat([mine_cos, mine_cos], -1) - cos[0]).abs() <= atol).all()
    assert ((torch.cat([mine_sin, mine_sin], -1) - sin[0]).abs() <= atol).all()
    # Against exact float64 angles posenc is within float32 rounding.
    angle = pos[0].double()[:, None] * RoPE(head_dim=HEAD_DIM).inv_freq
    torch.testing.assert_close(mine_cos.double(), angle.cos(), atol=1e-7, rtol=0)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_linear_matches_hf(fraction):
    cfg = _hf_config("linear", factor=4.0, partial_rotary_factor=fraction)
    want, _ = ROPE_INIT_FUNCTIONS["linear"](cfg, None)
    got, _ = inverse_frequencies(int(HEAD_DIM * fraction), scaling="linear", factor=4.0)
    torch.testing.assert_close(got.float(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("length", [1024, 2048, 3000, 16384])
def test_dynamic_matches_hf(length):
    cfg = _hf_config("dynamic", factor=2.0)
    cfg.max_position_embeddings = 2048
    want, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, None, seq_len=length)
    got, _ = inverse_frequencies(HEAD_DIM, scaling="dynamic", factor=2.0, original_max_len=2048, length=length)
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize(("factor", "original"), [(4.0, 4096), (16.0, 2048), (2.0, 512)])
def test_yarn_matches_hf(factor, original):
    cfg = _hf_config("yarn", factor=factor, original_max_position_embeddings=original)
    want, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg, None)
    got, mscale = inverse_frequencies(HEAD_DIM, scaling="yarn", factor=factor, original_max_len=original)
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=0)
    assert mscale == pytest.approx(attention_factor, rel=1e-12)


def test_llama3_matches_hf():
    cfg = _hf_config(
        "llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, None)
    got, _ = inverse_frequencies(HEAD_DIM, base=500000.0, scaling="llama3", factor=8.0, original_max_len=8192)
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=0)
    # The three bands: high frequencies kept, low ones divided by the factor.
    plain = plain_inverse_frequencies(HEAD_DIM, 500000.0)
    assert got[0] == plain[0] and got[-1] == pytest.approx(plain[-1] / 8.0)


def test_yarn_mscale_vector():
    assert round(yarn_mscale(16.0), 4) == 1.2773
    assert yarn_mscale(1.0) == 1.0 and yarn_mscale(0.5) == 1.0
    enc = RoPE(head_dim=16, scaling="yarn", factor=16.0, original_max_len=64)
    cos, sin = enc.cos_sin(torch.tensor([0]))
    torch.testing.assert_close(cos, torch.full((1, 8), 0.1 * math.log(16) + 1))
    torch.testing.assert_close(sin, torch.zeros(1, 8))


def test_ntk_base_formula():
    assert ntk_base(10000.0, 4.0, 64) == pytest.approx(10000.0 * 4.0 ** (64 / 62))
    got, _ = inverse_frequencies(64, scaling="ntk", factor=4.0)
    want = torch.tensor([(10000.0 * 4.0 ** (64 / 62)) ** (-2 * i / 64) for i in range(32)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert got[0] == 1.0 and got[-1] < plain_inverse_frequencies(64, 10000.0)[-1]


def test_dynamic_base_formula():
    assert dynamic_base(10000.0, 2.0, 64, 1000, 2048) == 10000.0
    assert dynamic_base(10000.0, 2.0, 64, 4096, 2048) == pytest.approx(10000.0 * (2 * 4096 / 2048 - 1) ** (64 / 62))


@pytest.mark.parametrize("scaling", ["none", "linear", "ntk", "dynamic", "yarn", "llama3"])
def test_factor_one_is_plain_rope_bit_for_bit(scaling):
    plain = RoPE(head_dim=32, fraction=0.75, layout="half")
    scaled = RoPE(head_dim=32, fraction=0.75, layout="half", scaling=scaling, factor=1.0, original_max_len=8)
    q, k = torch.randn(2, 3, 40, 32), torch.randn(2, 3, 40, 32)
    pos = torch.arange(40) * 3
    a, b = plain.rotate(q, k, pos, pos), scaled.rotate(q, k, pos, pos)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert scaled.rotate_after_cache is False


@pytest.mark.parametrize("scaling", ["linear", "ntk", "yarn", "llama3"])
def test_scaled_rope_is_still_relative(scaling):
    enc = RoPE(head_dim=32, scaling=scaling, factor=4.0, original_max_len=64)
    q, k = torch.randn(1, 1, 1, 32).double(), torch.randn(1, 1, 1, 32).double()

    def score(m: int, n: int) -> float:
        rq, rk = enc.rotate(q, k, torch.tensor([m]), torch.tensor([n]))
        return float((rq * rk).sum())

    assert score(5, 9) == pytest.approx(score(105, 109), abs=1e-4)


def test_linear_is_position_interpolation():
    q = torch.randn(1, 1, 1, 16)
    scaled, _ = RoPE(head_dim=16, scaling="linear", factor=4.0).rotate(q, q, torch.tensor([40]), torch.tensor([40]))
    plain, _ = RoPE(head_dim=16).rotate(q, q, torch.tensor([10]), torch.tensor([10]))
    torch.testing.assert_close(scaled, plain, atol=1e-5, rtol=0)


def test_dynamic_rotation_depends_on_current_length():
    enc = RoPE(head_dim=16, scaling="dynamic", factor=2.0, original_max_len=8)
    plain = RoPE(head_dim=16)
    assert enc.rotate_after_cache is True
    q = torch.randn(1, 1, 8, 16)
    short, _ = enc.rotate(q, q, torch.arange(8), torch.arange(8))  # length 8 <= L: plain RoPE
    torch.testing.assert_close(short, plain.rotate(q, q, torch.arange(8), torch.arange(8))[0], rtol=0, atol=0)
    # Length 20 > L: the same tokens rotate by the dynamic NTK base.
    long, _ = enc.rotate(q, torch.randn(1, 1, 20, 16), torch.arange(8), torch.arange(20))
    base = dynamic_base(10000.0, 2.0, 16, 20, 8)
    torch.testing.assert_close(long, RoPE(head_dim=16, base=base).rotate(q, q, torch.arange(8), torch.arange(8))[0])


def test_dynamic_cached_step_equals_prefix_forward():
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, num_heads=2, encoding=RoPE(head_dim=16, scaling="dynamic", factor=2.0, original_max_len=4))
    from posenc.attention import build_mask
    from posenc.cache import LayerCache

    x = torch.randn(1, 12, 32)
    cache = LayerCache()
    for t in range(12):
        pos = torch.arange(t + 1)[None]
        step = attn(x[:, t : t + 1], q_pos=pos[:, -1:], k_pos=pos, cache=cache)
        mask = build_mask(causal=True, batch=1, heads=2, q_len=t + 1, k_len=t + 1)
        prefix = attn(x[:, : t + 1], mask=mask)
        torch.testing.assert_close(step[:, 0], prefix[:, -1], atol=1e-5, rtol=1e-5)
