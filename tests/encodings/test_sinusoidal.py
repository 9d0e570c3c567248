import math

import numpy as np
import pytest
import torch

from posenc.encodings import Sinusoidal, build
from posenc.encodings.sinusoidal import sinusoidal_table
from posenc.reference import positional_encoding


@pytest.mark.parametrize("layout", ["interleaved", "concat"])
@pytest.mark.parametrize("frequencies", ["paper", "tensor2tensor"])
@pytest.mark.parametrize("d", [16, 33])
def test_matches_reference(layout, frequencies, d):
    enc = build(f"sinusoidal:layout={layout},frequencies={frequencies}", d_model=d)
    got = enc.encode(torch.arange(300)).double().numpy()
    want = positional_encoding(300, d, layout=layout, frequencies=frequencies)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_matches_pytorch_tutorial_formula():
    d, n = 64, 100
    # The PyTorch tutorial: div_term = exp(arange(0, d, 2) * (-log(10000) / d)); sin at 0::2, cos at 1::2.
    position = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    tutorial = torch.zeros(n, d)
    tutorial[:, 0::2] = torch.sin(position * div_term)
    tutorial[:, 1::2] = torch.cos(position * div_term)
    enc = Sinusoidal(d_model=d)
    torch.testing.assert_close(enc.encode(torch.arange(n)), tutorial, atol=1e-5, rtol=0)


def test_table_grows_without_limit_and_is_not_saved():
    enc = Sinusoidal(d_model=8)
    x = torch.zeros(1, 5, 8)
    out = enc.embed(x, torch.tensor([0, 1, 10_000, 50_000, 3]))
    want = positional_encoding(50_001, 8)[[0, 1, 10_000, 50_000, 3]]
    np.testing.assert_allclose(out[0].numpy(), want, atol=1e-5)
    assert enc.table.shape[0] >= 50_001
    assert "table" not in enc.state_dict()


def test_batched_noncontiguous_positions():
    enc = Sinusoidal(d_model=6)
    pos = torch.tensor([[0, 2, 4], [7, 8, 20]])
    out = enc.embed(torch.zeros(2, 3, 6), pos)
    table = positional_encoding(21, 6)
    np.testing.assert_allclose(out.numpy(), table[pos.numpy()], atol=1e-6)


def test_concat_combine_and_scale():
    enc = build("sinusoidal:combine=concat,dim=4,scale_input=true", d_model=12)
    assert enc.input_width(12) == 8
    x = torch.ones(2, 3, 8)
    out = enc.embed(x, torch.arange(3))
    assert out.shape == (2, 3, 12)
    torch.testing.assert_close(out[..., :8], torch.full((2, 3, 8), math.sqrt(12)))
    np.testing.assert_allclose(out[0, :, 8:].numpy(), positional_encoding(3, 4), atol=1e-6)


def test_bad_options():
    with pytest.raises(ValueError, match="layout must be one of"):
        Sinusoidal(d_model=8, layout="zigzag")
    with pytest.raises(ValueError, match="base must be a finite number > 1, got nan"):  # gave NaN columns
        Sinusoidal(d_model=8, base=float("nan"))
    from posenc.encodings.sinusoidal import sinusoidal_table

    for kw, message in (({"layout": "concatenated"}, "layout must be one of"),  # was the interleaved table
                        ({"frequencies": "fairseq"}, "frequencies must be one of"),  # was tensor2tensor's
                        ({"base": 1.0}, "base must be a finite number > 1, got 1.0")):
        with pytest.raises(ValueError, match=message):
            sinusoidal_table(2, 4, **kw)
    with pytest.raises(ValueError, match="0 < dim < d_model"):
        Sinusoidal(d_model=8, combine="concat", dim=8)
    with pytest.raises(ValueError, match="positions must be >= 0"):
        Sinusoidal(d_model=8).encode(torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="integer"):
        Sinusoidal(d_model=8).encode(torch.tensor([0.5]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("call_in_between", [False, True])
def test_table_is_exact_after_a_round_trip_through_half_precision(dtype, call_in_between):
    """``model.half()`` then ``.float()`` (with or without a call in between) leaves the float32 table exact; it
    stayed rounded to the lower precision (off by ~2e-3)."""
    enc, pos = Sinusoidal(d_model=64), torch.arange(300)
    enc.encode(pos)
    enc.to(dtype)
    if call_in_between:
        enc.encode(pos)
    enc.float()
    torch.testing.assert_close(enc.encode(pos), sinusoidal_table(300, 64), rtol=0, atol=0)
