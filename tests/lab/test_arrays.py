import math

import numpy as np
import pytest
import torch

from posenc import LanguageModel, LMConfig, reference
from posenc.encodings import PositionalEncoding, names
from posenc.lab import arrays


class ToyAlibi(PositionalEncoding):
    """An independent ALiBi for the picture tests: bias = -m_h * (i - j), slopes 2^(-8(h+1)/H)."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])

    def bias(self, q_pos, k_pos):
        d = (q_pos[:, None] - k_pos[None, :]).float()  # (Tq, Tk)
        return -self.slopes[:, None, None] * d  # (H, Tq, Tk)


class ToyRotary(PositionalEncoding):
    """Interleaved RoPE written out for the tests (RoFormer eq. 15)."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)

    def _rot(self, x, pos):
        ang = pos.double()[:, None] * self.theta  # (T, Dh/2)
        c, s = ang.cos().float(), ang.sin().float()
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)

    def rotate(self, q, k, q_pos, k_pos):
        return self._rot(q, q_pos), self._rot(k, k_pos)


def test_sinusoidal_matrix_equals_reference():
    m = arrays.encoding_matrix("sinusoidal", length=50, d_model=32)
    np.testing.assert_allclose(m, reference.positional_encoding(50, 32), atol=1e-6)


def test_sinusoidal_concat_matrix_is_the_appended_columns():
    m = arrays.encoding_matrix("sinusoidal:combine=concat,dim=16", length=20, d_model=32)
    np.testing.assert_allclose(m, reference.positional_encoding(20, 16), atol=1e-6)


def test_similarity_symmetric_with_known_diagonal_and_shift_invariant():
    s = arrays.position_similarity(arrays.encoding_matrix("sinusoidal", length=40, d_model=32))
    np.testing.assert_allclose(s, s.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(s), 16.0, atol=1e-5)  # d/2 pairs with sin^2 + cos^2 = 1
    # sum_i cos((m - n) w_i): a function of m - n only (Vaswani et al. sec. 3.5)
    np.testing.assert_allclose(np.diag(s, 3)[:-5], np.diag(s, 3)[5:], atol=1e-5)
    w = 1e4 ** (-np.arange(16) * 2 / 32)
    assert s[7, 2] == pytest.approx(np.cos(5 * w).sum(), abs=1e-5)


def test_rotary_matrix_rotates_a_unit_query():
    m = arrays.encoding_matrix(ToyRotary(16), length=30, d_model=16, num_heads=1)
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-6)  # rotations keep the norm
    s = arrays.position_similarity(m)
    theta = 1e4 ** (-np.arange(8) * 2 / 16)
    assert s[9, 4] == pytest.approx(np.cos(5 * theta).sum() * 2 / 16, abs=1e-6)  # <R_m u, R_n u>


def test_nope_matrix_is_zero_and_bias_families_have_none():
    assert not arrays.encoding_matrix("none", length=5, d_model=8).any()
    with pytest.raises(ValueError, match="bias_by_distance"):
        arrays.encoding_matrix(ToyAlibi(4), length=5, d_model=8, num_heads=4)


def test_rope_wavelengths_formula():
    lam = arrays.rope_wavelengths(64, base=10000.0)
    assert lam.shape == (32,)
    assert lam[0] == pytest.approx(2 * math.pi)
    assert lam[16] == pytest.approx(2 * math.pi * 100.0)  # base^(2*16/64) = sqrt(1e4)
    np.testing.assert_allclose(arrays.rope_wavelengths(64, factor=4.0), 4 * lam)
    # the toy rotary really turns pair i by 2*pi after lambda_i positions
    rot = ToyRotary(64)
    assert float(2 * math.pi / rot.theta[5]) == pytest.approx(lam[5])
    with pytest.raises(ValueError, match="even"):
        arrays.rope_wavelengths(63)
    for kw, message in (({"base": 1.0}, "base must be a finite number > 1, got 1.0"),
                        ({"base": float("inf")}, "base must be a finite number > 1, got inf"),  # gave all-inf
                        ({"factor": float("nan")}, "factor must be a finite number > 0, got nan")):
        with pytest.raises(ValueError, match=message):
            arrays.rope_wavelengths(64, **kw)


def test_alibi_bias_is_minus_slope_times_distance():
    d, b = arrays.bias_by_distance(ToyAlibi(8), num_heads=8, max_distance=12)
    np.testing.assert_array_equal(d, np.arange(13))
    slopes = 2.0 ** -np.arange(1, 9)
    np.testing.assert_allclose(b, -slopes[:, None] * d[None, :], atol=1e-6)


def test_bidirectional_bias_covers_both_sides():
    d, b = arrays.bias_by_distance(ToyAlibi(2), num_heads=2, max_distance=3, causal=False)
    np.testing.assert_array_equal(d, np.arange(-3, 4))
    np.testing.assert_allclose(b[0], -(2.0**-4) * d, atol=1e-6)


@pytest.mark.skipif("alibi" not in names(), reason="the alibi encoding is not registered")
def test_registered_alibi_bias_vs_distance():
    d, b = arrays.bias_by_distance("alibi", num_heads=8, max_distance=20)
    np.testing.assert_allclose(b, -(2.0 ** -np.arange(1, 9))[:, None] * d, atol=1e-5)


def test_shaw_has_no_matrix_rather_than_nopes_zeros():
    with pytest.raises(ValueError, match="'shaw' adds learned relative-position vectors inside attention"):
        arrays.encoding_matrix("shaw", length=8, d_model=16, num_heads=2)


def test_no_bias_is_an_error():
    with pytest.raises(ValueError, match="no bias"):
        arrays.bias_by_distance("sinusoidal", num_heads=2, max_distance=4)
    with pytest.raises(ValueError, match="num_heads must be positive, got 0"):  # named, not d_model
        arrays.bias_by_distance("alibi", num_heads=0, max_distance=4)


def test_a_bias_picture_of_shaw_points_to_neither_bias_nor_matrix():
    """It advised `posenc plot matrix`, which refuses Shaw's encoding too."""
    with pytest.raises(ValueError, match="'shaw' adds no bias") as err:
        arrays.bias_by_distance("shaw", num_heads=2, max_distance=4)
    assert "plot matrix" not in str(err.value) and "neither a bias nor a matrix pictures it" in str(err.value)
    with pytest.raises(ValueError, match="picture it with posenc plot matrix"):  # which does draw sinusoids
        arrays.bias_by_distance("sinusoidal", num_heads=2, max_distance=4)


def test_attention_maps_match_a_hand_computed_first_layer():
    cfg = LMConfig(vocab_size=11, d_model=16, num_heads=2, num_layers=2, dim_feedforward=32, encoding="sinusoidal")
    model = LanguageModel(cfg)
    ids = torch.tensor([[1, 5, 2, 9, 3, 3, 7]])
    maps = arrays.attention_maps(model, ids)
    assert len(maps) == 2
    first = maps[next(iter(maps))]  # (H, T, T)
    assert first.shape == (2, 7, 7)
    np.testing.assert_allclose(first.sum(-1), 1.0, atol=1e-6)
    assert np.all(np.triu(first, 1) == 0)  # causal
    # by hand: pre-norm layer 0 sees token embeddings * sqrt(d) + PE (Vaswani et al. eq. 1)
    layer = model.stack.layers[0]
    with torch.no_grad():
        pe = torch.as_tensor(reference.positional_encoding(7, 16), dtype=torch.float32)
        x = model.embedding(ids) * math.sqrt(16) + pe
        h = layer.norm1(x)
        q, k, _ = layer.self_attn.in_proj(h).split(16, dim=-1)
        q, k = (t.view(1, 7, 2, 8).transpose(1, 2) for t in (q, k))
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)
        scores = scores.masked_fill(torch.ones(7, 7).triu(1).bool(), float("-inf"))
        want = torch.softmax(scores, -1)[0].double().numpy()
    np.testing.assert_allclose(first, want, atol=1e-5)
    assert not any(m.capture_weights for m in model.modules() if hasattr(m, "capture_weights"))
