import math

import pytest
import torch

from posenc.encodings import ALiBi, alibi_slopes, build


@pytest.mark.parametrize(
    ("n", "log2"),
    [
        (4, [-2, -4, -6, -8]),
        (8, [-1, -2, -3, -4, -5, -6, -7, -8]),
        (12, [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]),
        (16, [-0.5 * (i + 1) for i in range(16)]),
    ],
)
def test_slopes_vectors(n, log2):
    torch.testing.assert_close(alibi_slopes(n).log2(), torch.tensor(log2, dtype=torch.float64))


@pytest.mark.parametrize("n", [1, 3, 5, 8, 12, 20])
def test_slopes_match_bloom(n):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    alibi = build_alibi_tensor(torch.ones(1, 6), n, torch.float32)  # (H, 1, T): slope_h * position
    torch.testing.assert_close(alibi[:, 0, 1], alibi_slopes(n).float())


def test_causal_bias_is_minus_slope_times_distance():
    enc = build("alibi", num_heads=8, causal=True)
    b = enc.bias(torch.arange(5), torch.arange(5))
    i, j = 4, 1
    assert b.shape == (8, 5, 5)
    torch.testing.assert_close(b[:, i, j], -alibi_slopes(8).float() * (i - j))
    assert torch.all(b[:, torch.arange(5), torch.arange(5)] == 0)


def test_causal_bias_matches_bloom_up_to_row_constant():
    # BLOOM adds slope * j; softmax is invariant to the per-row constant -slope * i, so rows agree after centring.
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    bloom = build_alibi_tensor(torch.ones(1, 7), 4, torch.float32)[:, 0, :]  # (H, T)
    mine = ALiBi(num_heads=4).bias(torch.arange(7), torch.arange(7))  # (H, T, T)
    for i in range(7):
        torch.testing.assert_close(mine[:, i, : i + 1] - mine[:, i, :1], bloom[:, : i + 1] - bloom[:, :1])


def test_bidirectional_is_symmetric():
    b = ALiBi(num_heads=4, causal=False).bias(torch.arange(6), torch.arange(6))
    torch.testing.assert_close(b, b.transpose(-1, -2))
    assert b[0, 0, 5] == pytest.approx(-0.25 * 5)


def test_cached_per_shape_and_batched_positions():
    enc = ALiBi(num_heads=2)
    a = enc.bias(torch.arange(4), torch.arange(4))
    assert enc.bias(torch.arange(4), torch.arange(4)) is a  # reused by every layer
    pos = torch.tensor([[0, 1, 2, 3], [0, 0, 5, 9]])
    bb = enc.bias(pos, pos)
    assert bb.shape == (2, 2, 4, 4)
    torch.testing.assert_close(bb[0], a)
    assert float(bb[1, 0, 3, 2]) == pytest.approx(-(1 / 16) * 4)  # n=2 slopes: 1/16, 1/256
    assert math.isclose(float(bb[1, 1, 3, 0]), -(1 / 256) * 9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_is_exact_after_a_round_trip_through_half_precision(dtype):
    """With 12 heads some slopes are 2^(-k/2), which half precision rounds: ``.half().float()`` used to leave the
    slopes, and the biases cached meanwhile, rounded (~8e-5)."""
    enc, fresh, pos = build("alibi", num_heads=12), build("alibi", num_heads=12), torch.arange(50)
    enc.to(dtype)
    enc.bias(pos, pos)
    enc.float()
    torch.testing.assert_close(enc.slopes, fresh.slopes, rtol=0, atol=0)
    torch.testing.assert_close(enc.bias(pos, pos), fresh.bias(pos, pos), rtol=0, atol=0)
