import copy
import math

import pytest
import torch

from posenc.attention import MultiHeadAttention
from posenc.encodings import RoPE, apply_rotary, build, convert_rope_layout
from posenc.encodings.rotary import rope_layout_permutation
from posenc.stacks import TransformerEncoder


def _rotation_reference(x: torch.Tensor, pos: int, base: float = 10000.0) -> torch.Tensor:
    """The paper's block-diagonal R_m (RoFormer eq. 15), interleaved pairs, in float64."""
    d = x.shape[-1]
    out = x.double().clone()
    for i in range(d // 2):
        theta = base ** (-2 * i / d)
        c, s = math.cos(pos * theta), math.sin(pos * theta)
        a, b = x[..., 2 * i].double(), x[..., 2 * i + 1].double()
        out[..., 2 * i], out[..., 2 * i + 1] = a * c - b * s, a * s + b * c
    return out


def test_matches_paper_rotation_matrix():
    enc = RoPE(head_dim=16)
    x = torch.randn(1, 1, 5, 16)
    pos = torch.tensor([0, 1, 7, 300, 5000])
    got, _ = enc.rotate(x, x, pos, pos)
    for t, p in enumerate(pos.tolist()):
        torch.testing.assert_close(got[0, 0, t].double(), _rotation_reference(x[0, 0, t], p), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_dot_product_depends_only_on_distance(layout):
    enc = RoPE(head_dim=32, layout=layout)
    q, k = torch.randn(1, 1, 1, 32).double(), torch.randn(1, 1, 1, 32).double()

    def score(m: int, n: int) -> float:
        rq, _ = enc.rotate(q, q, torch.tensor([m]), torch.tensor([m]))
        rk, _ = enc.rotate(k, k, torch.tensor([n]), torch.tensor([n]))
        return float((rq * rk).sum())

    for delta in (0, 3, 50):
        ref = score(0, delta)
        for m in (1, 17, 1000):
            assert score(m, m + delta) == pytest.approx(ref, abs=1e-4)
    assert abs(score(0, 3) - score(0, 50)) > 1e-3


def test_partial_rotary_leaves_tail_untouched():
    enc = RoPE(head_dim=16, fraction=0.5)
    assert enc.rot_dim == 8
    x = torch.randn(2, 3, 6, 16)
    out, _ = enc.rotate(x, x, torch.arange(6) + 4, torch.arange(6) + 4)
    torch.testing.assert_close(out[..., 8:], x[..., 8:], rtol=0, atol=0)
    assert not torch.allclose(out[..., :8], x[..., :8])


def test_tables_grow_and_are_not_saved():
    enc = RoPE(head_dim=8)
    x = torch.randn(1, 1, 2, 8)
    out, _ = enc.rotate(x, x, torch.tensor([3, 10_000]), torch.tensor([3, 10_000]))
    assert enc.cos_table.shape[0] >= 10_001
    torch.testing.assert_close(out[0, 0, 1].double(), _rotation_reference(x[0, 0, 1], 10_000), atol=1e-4, rtol=0)
    assert enc.state_dict() == {}


def test_batched_noncontiguous_positions_match_rows():
    enc = RoPE(head_dim=8, layout="half")
    q, k = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)
    pos = torch.tensor([[9, 0], [2, 1], [5, 2], [40, 3]]).t()  # a non-contiguous (B, T) view
    assert not pos.is_contiguous()
    rq, rk = enc.rotate(q, k, pos, pos)
    for b in range(2):
        eq, ek = enc.rotate(q[b : b + 1], k[b : b + 1], pos[b].contiguous(), pos[b].contiguous())
        torch.testing.assert_close(rq[b : b + 1], eq)
        torch.testing.assert_close(rk[b : b + 1], ek)


def test_layout_permutation_is_a_permutation():
    p = rope_layout_permutation(12, 8, "interleaved", "half")
    assert p.tolist() == [0, 2, 4, 6, 1, 3, 5, 7, 8, 9, 10, 11]
    back = rope_layout_permutation(12, 8, "half", "interleaved")
    assert p[back].tolist() == list(range(12))


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_converted_weights_give_identical_attention(fraction):
    d, h = 32, 4
    src = MultiHeadAttention(d_model=d, num_heads=h, encoding=build(f"rope:layout=interleaved,fraction={fraction}", head_dim=8))
    dst = MultiHeadAttention(d_model=d, num_heads=h, encoding=build(f"rope:layout=half,fraction={fraction}", head_dim=8))
    dst.load_state_dict(src.state_dict())
    with torch.no_grad():
        for part in (slice(0, d), slice(d, 2 * d)):  # W_Q rows, then W_K rows
            for t in (dst.in_proj.weight, dst.in_proj.bias):
                t[part] = convert_rope_layout(t[part], num_heads=h, head_dim=8, src="interleaved", dst="half", fraction=fraction)
    x = torch.randn(2, 9, d)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [3, 5, 8, 13, 21, 34, 55, 89, 144]])
    torch.testing.assert_close(dst(x, q_pos=pos), src(x, q_pos=pos), atol=1e-5, rtol=1e-5)
    # Without conversion the two layouts disagree.
    plain = MultiHeadAttention(d_model=d, num_heads=h, encoding=build(f"rope:layout=half,fraction={fraction}", head_dim=8))
    plain.load_state_dict(src.state_dict())
    assert not torch.allclose(plain(x, q_pos=pos), src(x, q_pos=pos), atol=1e-3)


def test_apply_rotary_half_matches_hf():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = torch.randn(5, 4), torch.randn(5, 4)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    hq, hk = apply_rotary_pos_emb(q, k, torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None])
    assert torch.equal(apply_rotary(q, cos, sin, layout="half"), hq)
    assert torch.equal(apply_rotary(k, cos, sin, layout="half"), hk)


def test_rope_rotation_matches_hf_llama_end_to_end():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    pos = torch.tensor([[0, 3, 4, 100, 2047]])
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 4, 5, 16)
    cos, sin = LlamaRotaryEmbedding(cfg)(q, pos)
    hq, hk = apply_rotary_pos_emb(q, k, cos, sin)
    rq, rk = RoPE(head_dim=16, layout="half").rotate(q, k, pos, pos)
    torch.testing.assert_close(rq, hq, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(rk, hk, atol=2e-5, rtol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="layout must be one of"):
        RoPE(head_dim=8, layout="zigzag")
    with pytest.raises(ValueError, match="scaling must be one of"):
        RoPE(head_dim=8, scaling="magic")
    with pytest.raises(ValueError, match="factor must be a finite number >= 1 .*got 0.5"):
        RoPE(head_dim=8, scaling="linear", factor=0.5)
    with pytest.raises(ValueError, match="fewer than 2 dims"):
        RoPE(head_dim=8, fraction=0.1)
    with pytest.raises(ValueError, match="head_dim"):
        build("rope")


@pytest.mark.parametrize("kw, message", [
    ({"base": float("nan")}, "base must be a finite number > 1, got nan"),
    ({"base": float("inf")}, "base must be a finite number > 1, got inf"),
    ({"scaling": "linear", "factor": float("nan")}, "factor must be a finite number >= 1 .*got nan"),
    ({"scaling": "yarn", "factor": float("inf")}, "factor must be a finite number >= 1 .*got inf"),
    ({"scaling": "llama3", "factor": 8.0, "high_freq_factor": float("inf")},
     "llama3 needs finite high_freq_factor > low_freq_factor > 0, got inf, 1.0"),
    ({"scaling": "yarn", "factor": 4.0, "beta_fast": float("inf")}, "yarn needs finite beta_fast > beta_slow > 0"),
])
def test_non_finite_base_or_factor_is_named(kw, message):
    with pytest.raises(ValueError, match=message):
        RoPE(head_dim=8, **kw)


@pytest.mark.parametrize("spec, message", [
    ("rope:factor=8", r"factor=8.0 has no effect with scaling='none'; it is read by scaling linear / ntk"),
    ("rope:scaling=linear,factor=2,beta_slow=-3", r"beta_slow=-3.0 has no effect with scaling='linear'.* yarn$"),
    ("rope:scaling=yarn,factor=2,low_freq_factor=2", r"low_freq_factor=2.0 has no effect .* llama3$"),
])
def test_an_option_the_scaling_ignores_is_an_error(spec, message):
    """``rope:factor=8`` alone used to be plain RoPE without a word: a context extension that did nothing."""
    with pytest.raises(ValueError, match=message):
        build(spec, head_dim=8)


def test_original_max_len_is_accepted_with_any_scaling():  # it describes the model (posenc extend always sets it)
    for scaling in ("none", "linear", "ntk"):
        plain = RoPE(head_dim=8, scaling=scaling, factor=1.0 if scaling == "none" else 2.0)
        described = RoPE(head_dim=8, scaling=scaling, factor=plain.factor, original_max_len=64)
        assert torch.equal(plain.inv_freq, described.inv_freq)


@pytest.mark.parametrize("scaling", ["ntk", "dynamic"])
def test_ntk_scalings_need_a_rotary_width_above_two(scaling):
    """b * s^(R/(R-2)) is undefined for R = 2: refused when built, not a ZeroDivisionError mid-generation."""
    message = f"{scaling} scales the base .* rotary width R of 2 .*head_dim=8, fraction=0.25"
    with pytest.raises(ValueError, match=message):
        RoPE(head_dim=8, fraction=0.25, scaling=scaling, factor=2.0)
    RoPE(head_dim=8, fraction=0.5, scaling=scaling, factor=2.0)  # R = 4 is fine


@pytest.mark.parametrize("spec", ["rope", "rope:scaling=dynamic,factor=2,original_max_len=4", "xpos", "sinusoidal"])
def test_training_after_an_inference_mode_pass_gets_the_same_gradients(spec):
    """Tables cached during an evaluation under inference_mode are inference tensors, which autograd cannot save for
    backward: a training step after such a pass used to raise. Its gradients equal those of a model that never
    evaluated. (The 8 tokens pass the dynamic scaling's trained length of 4, so its own tables are used.)"""
    model = TransformerEncoder(d_model=16, nhead=2, num_layers=2, dim_feedforward=32, dropout=0.0,
                               positional_encoding=spec, causal=True)
    twin = copy.deepcopy(model)
    x = torch.randn(2, 8, 16)
    with torch.inference_mode():
        model.eval()(x)
    for m in (model, twin):
        m.train()(x).pow(2).sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tables_are_exact_after_a_round_trip_through_half_precision(dtype):
    """A conversion empties the tables, so ``.to(dtype).float()`` leaves them as computed, not rounded to dtype
    (a table cast to float16 and back was off by ~2e-4)."""
    enc, pos = RoPE(head_dim=16), torch.arange(300)
    want = [t.clone() for t in enc.cos_sin(pos)]
    enc.to(dtype).float()
    for got, expected in zip(enc.cos_sin(pos), want):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_positions_that_do_not_match_the_rows_are_named():
    rope = RoPE(head_dim=8)
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match=r"q_pos holds 5 positions \(shape \(5,\)\) for 3 q rows"):
        rope.rotate(q, k, torch.arange(5), torch.arange(5))
    with pytest.raises(ValueError, match=r"k_pos holds 3 positions \(shape \(1, 3\)\) for 5 k rows"):
        rope.rotate(q, k, torch.arange(3), torch.arange(3)[None])
