import pytest
import torch

from posenc.encodings import RoPE, XPos, build
from posenc.stacks import TransformerEncoder


def test_logit_is_rope_logit_decayed_per_pair():
    enc, rope = XPos(head_dim=8), RoPE(head_dim=8)
    q, k = torch.randn(1, 1, 1, 8).double(), torch.randn(1, 1, 1, 8).double()
    n, m = torch.tensor([300]), torch.tensor([100])
    xq, xk = enc.rotate(q.float(), k.float(), n, m)
    rq, rk = rope.rotate(q, k, n, m)
    zeta = (torch.arange(4, dtype=torch.float64) * 2 / 8 + 0.4) / 1.4
    pair = (rq * rk).view(4, 2).sum(-1)  # per-pair contribution to <R_n q, R_m k>
    want = (pair * zeta ** ((300 - 100) / 512)).sum()
    assert float((xq * xk).sum()) == pytest.approx(float(want), rel=1e-4)


def test_relative_and_stable_far_away():
    enc = XPos(head_dim=16)
    q, k = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16)
    pos = torch.arange(4)
    a_q, a_k = enc.rotate(q, k, pos, pos)
    a = torch.matmul(a_q, a_k.transpose(-1, -2))
    far = pos + 200_000
    b_q, b_k = enc.rotate(q, k, far, far)
    b = torch.matmul(b_q, b_k.transpose(-1, -2))
    assert torch.isfinite(b).all()
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)


def test_bidirectional_is_refused():
    with pytest.raises(ValueError, match="causal only"):
        build("xpos", head_dim=8, causal=False)
    with pytest.raises(ValueError, match="causal only"):
        TransformerEncoder(d_model=16, nhead=2, num_layers=1, positional_encoding="xpos")
    assert build("xpos", head_dim=8, causal=True).rotate_after_cache is True


@pytest.mark.parametrize("kw", [{"scale_base": 0.0}, {"scale_base": float("nan")}, {"gamma": -0.4},
                                {"gamma": float("inf")}])
def test_a_bad_scale_base_or_gamma_is_named(kw):
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=f"{name} must be a finite number > 0, got {value}"):
        build("xpos", head_dim=8, **kw)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_an_odd_head_dim_passes_its_last_dim_through(layout):
    """As RoPE does, an odd head's last dim is neither rotated nor decayed; the rest is xPos of the even part."""
    enc, even = XPos(head_dim=7, layout=layout), XPos(head_dim=6, layout=layout)
    q, k = torch.randn(2, 2, 5, 7), torch.randn(2, 2, 5, 7)
    pos = torch.arange(3, 8)
    got_q, got_k = enc.rotate(q, k, pos, pos)
    want_q, want_k = even.rotate(q[..., :6], k[..., :6], pos, pos)
    torch.testing.assert_close(got_q[..., :6], want_q)
    torch.testing.assert_close(got_k[..., :6], want_k)
    assert torch.equal(got_q[..., 6], q[..., 6]) and torch.equal(got_k[..., 6], k[..., 6])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_outputs_are_exact_after_a_round_trip_through_half_precision(dtype):
    """log(zeta) is made again from float64 after a conversion: ``.half().float()`` used to leave it rounded (the
    decay off by ~1.7e-4). It is not saved (a non-persistent buffer), so state dicts are unchanged."""
    enc, fresh = XPos(head_dim=16), XPos(head_dim=16)
    q, k, pos = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16), torch.arange(40)
    enc.rotate(q, k, pos, pos)
    enc.to(dtype).float()
    torch.testing.assert_close(enc.log_zeta, fresh.log_zeta, rtol=0, atol=0)
    for got, want in zip(enc.rotate(q, k, pos, pos), fresh.rotate(q, k, pos, pos)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert "log_zeta" not in enc.state_dict()
