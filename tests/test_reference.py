import math

import numpy as np
import pytest

from posenc.reference import incorporate_positional_encoding, positional_encoding


def test_shape_and_dtype():
    pe = positional_encoding(50, 16)
    assert pe.shape == (50, 16)
    assert pe.dtype == np.float64


def test_published_vectors():
    pe = positional_encoding(4, 8)
    np.testing.assert_allclose(pe[0], [0, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(pe[1, :2], [0.841471, 0.540302], atol=1e-6)


def test_formula_element_by_element():
    d = 10
    pe = positional_encoding(7, d)
    for pos in range(7):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-12)
            assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-12)


def test_odd_width_last_column_is_sine():
    d = 7
    pe = positional_encoding(5, d)
    assert pe.shape == (5, 7)
    angle = np.arange(5) / 10000 ** (2 * 3 / d)
    np.testing.assert_allclose(pe[:, 6], np.sin(angle))


@pytest.mark.parametrize("d", [8, 9])
def test_layouts_are_a_permutation(d):
    inter = positional_encoding(20, d)
    concat = positional_encoding(20, d, layout="concat")
    n_sin = (d + 1) // 2
    perm = list(range(0, d, 2)) + list(range(1, d, 2))  # sines first, then cosines
    np.testing.assert_allclose(concat, inter[:, perm])
    np.testing.assert_allclose(concat[0, :n_sin], 0.0)  # sin(0) in the first half


def test_tensor2tensor_frequencies():
    d = 8
    pe = positional_encoding(6, d, layout="concat", frequencies="tensor2tensor")
    inc = math.log(10000) / (d // 2 - 1)
    for i in range(d // 2):
        inv = math.exp(-i * inc)
        np.testing.assert_allclose(pe[:, i], np.sin(np.arange(6) * inv))
        np.testing.assert_allclose(pe[:, d // 2 + i], np.cos(np.arange(6) * inv))


def test_incorporate_add_returns_new_array():
    x = np.ones((2, 5, 8))
    before = x.copy()
    y = incorporate_positional_encoding(x)
    np.testing.assert_array_equal(x, before)  # caller's array untouched
    np.testing.assert_allclose(y, before + positional_encoding(5, 8)[None])
    assert y is not x


def test_incorporate_concat():
    x = np.zeros((3, 4, 6))
    y = incorporate_positional_encoding(x, mode="concat", pe_dim=4)
    assert y.shape == (3, 4, 10)
    np.testing.assert_allclose(y[1, :, 6:], positional_encoding(4, 4))
    np.testing.assert_array_equal(y[..., :6], 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "mix"}, "mode"), ({"layout": "zig"}, "layout"), ({"frequencies": "x"}, "frequencies"),
     ({"base": -5.0}, "base must be a finite number > 1, got -5.0"),  # gave NaN with a warning
     ({"mode": "concat", "pe_dim": 0}, "d_model must be a positive int, got 0"),  # was d_model wide
     ({"base": "x"}, "base must be a finite number > 1, got 'x'"),  # NumPy's TypeError named no option
     ({"mode": "add", "pe_dim": 6}, "pe_dim=6 applies to mode='concat'; mode='add' adds d_model=4")],  # ignored
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        incorporate_positional_encoding(np.zeros((1, 2, 4)), **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="batch, seq, d_model"):
        incorporate_positional_encoding(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="d_model"):
        positional_encoding(3, 0)
    with pytest.raises(ValueError, match="sequence_length must be a non-negative int, got 3.0"):  # a TypeError later
        positional_encoding(3.0, 4)
