import math

import pytest
import torch

from posenc.encodings import FIRE, build


def _reference(enc: FIRE, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1), evaluated pair by pair (causal)."""
    c, L = float(enc.c.detach()), float(enc.threshold.detach())
    out = torch.zeros(enc.num_heads, len(q_pos), len(k_pos))
    for a, i in enumerate(q_pos.tolist()):
        for b, j in enumerate(k_pos.tolist()):
            x = math.log(c * max(i - j, 0) + 1) / (math.log(c * max(L, i) + 1) + 1e-6)
            out[:, a, b] = enc.mlp(torch.tensor([[x]]))[0]
    return out


@pytest.mark.parametrize("threshold", [512.0, 3.0])  # below L: per-distance path; past L: the full grid
def test_matches_formula(threshold):
    enc = FIRE(num_heads=2, init_threshold=threshold)
    q, k = torch.arange(3, 9), torch.arange(9)
    torch.testing.assert_close(enc.bias(q, k), _reference(enc, q, k), atol=1e-5, rtol=1e-5)


def test_init_and_gradients():
    enc = build("fire", num_heads=3, causal=True)
    assert float(enc.c.detach()) == pytest.approx(0.1) and float(enc.threshold.detach()) == 512.0
    assert enc.mlp[0].in_features == 1 and enc.mlp[0].out_features == 32 and enc.mlp[2].out_features == 3
    enc.bias(torch.arange(10), torch.arange(10)).pow(2).sum().backward()
    for p in (enc.c, enc.threshold, enc.mlp[0].weight, enc.mlp[2].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_bidirectional_sees_direction():
    enc = FIRE(num_heads=1, causal=False)
    assert enc.mlp[0].in_features == 2
    b = enc.bias(torch.arange(5), torch.arange(5))
    assert not torch.allclose(b[0, 2, 0], b[0, 2, 4])  # same |i - j|, other side


def test_batched_positions_match_rows():
    enc = FIRE(num_heads=2, init_threshold=6.0)
    pos = torch.tensor([[0, 1, 2, 3], [2, 4, 7, 11]])
    b = enc.bias(pos, pos)
    for r in range(2):
        torch.testing.assert_close(b[r], enc.bias(pos[r], pos[r]))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("q0, tq, k0, tk", [(0, 7, 0, 7), (5, 1, 0, 6), (40, 4, 30, 14), (0, 100, 0, 100)])
def test_toeplitz_layout_equals_the_per_pair_lookup(causal, q0, tq, k0, tk):
    """Plain ranges below the threshold take the Toeplitz layout; the same positions given per batch row (never a
    range) take the per-pair lookup: values and gradients must agree."""
    enc = FIRE(num_heads=3, causal=causal)
    q_pos, k_pos = torch.arange(q0, q0 + tq), torch.arange(k0, k0 + tk)
    fast = enc.bias(q_pos, k_pos)  # (H, Tq, Tk)
    slow = enc.bias(q_pos[None], k_pos[None])[0]  # (1, H, Tq, Tk) -> (H, Tq, Tk)
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    g = torch.randn_like(fast)
    params = [enc.c, enc.threshold, *enc.mlp.parameters()]
    grads_fast = torch.autograd.grad((fast * g).sum(), params, allow_unused=True)
    grads_slow = torch.autograd.grad((slow * g).sum(), params, allow_unused=True)
    for a, b in zip(grads_fast, grads_slow):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("causal, threshold", [(True, 512.0), (False, 512.0), (True, 3.0)])
def test_a_cast_module_computes_in_its_dtype(dtype, causal, threshold):
    """After ``model.double()`` or ``.to(torch.bfloat16)`` the MLP's inputs follow its weights (they were float32)."""
    enc = FIRE(num_heads=2, causal=causal, init_threshold=threshold)
    want = enc.bias(torch.arange(3, 9), torch.arange(9))
    got = enc.to(dtype).bias(torch.arange(3, 9), torch.arange(9))
    assert got.dtype == dtype
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float64 else dict(atol=0.05, rtol=0.05)
    torch.testing.assert_close(got.float(), want, **tol)


@pytest.mark.parametrize("kw, message", [
    ({"init_c": float("nan")}, "init_c must be a finite number > 0, got nan"),
    ({"init_c": float("inf")}, "init_c must be a finite number > 0, got inf"),
    ({"init_c": 0.0}, "init_c must be a finite number > 0, got 0.0"),
    ({"init_threshold": float("nan")}, "init_threshold must be a finite number >= 1, got nan"),
    ({"init_threshold": float("inf")}, "init_threshold must be a finite number >= 1, got inf"),
    ({"init_threshold": 0.5}, "init_threshold must be a finite number >= 1, got 0.5"),
])
def test_a_bad_init_value_is_named(kw, message):
    """NaN fails every comparison, so ``init_c <= 0`` let it through (and every bias became NaN)."""
    with pytest.raises(ValueError, match=message):
        build("fire", num_heads=2, **kw)
