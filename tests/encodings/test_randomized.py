import pytest
import torch

from posenc.encodings import Randomized, RoPE, build, parse_spec


def test_training_positions_sorted_distinct_in_range():
    enc = Randomized(inner="rope", max_len=64, head_dim=8)
    enc.train()
    for _ in range(20):
        p = enc.prepare_positions(torch.arange(30))
        assert p.shape == (30,) and bool((p.diff() > 0).all()) and 0 <= int(p.min()) and int(p.max()) < 64


def test_eval_positions_are_plain():
    enc = Randomized(inner="alibi", max_len=64, num_heads=2).eval()
    pos = torch.tensor([[0, 0, 1, 2], [0, 1, 2, 3]])
    assert torch.equal(enc.prepare_positions(pos), pos)


def test_deterministic_under_seed():
    a, b = Randomized(inner="none", max_len=100, seed=3), Randomized(inner="none", max_len=100, seed=3)
    c = Randomized(inner="none", max_len=100, seed=4)
    pa = [a.prepare_positions(torch.arange(10)) for _ in range(3)]
    pb = [b.prepare_positions(torch.arange(10)) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not torch.equal(pa[0], pa[1])
    assert not torch.equal(pa[0], c.prepare_positions(torch.arange(10)))
    a.reset()
    assert torch.equal(a.prepare_positions(torch.arange(10)), pa[0])


def test_uniform_over_range():
    enc = Randomized(inner="none", max_len=8, seed=0)
    counts = torch.bincount(torch.cat([enc.prepare_positions(torch.arange(1)) for _ in range(4000)]), minlength=8)
    assert counts.min() > 400 and counts.max() < 600  # expected 500 each


def test_padded_positions_keep_structure():
    enc = Randomized(inner="none", max_len=50, seed=1)
    pos = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])  # left padding clamps to 0
    p = enc.prepare_positions(pos)
    assert p.shape == (2, 5) and p[0, 0] == p[0, 1] == p[0, 2] and bool((p[1].diff() > 0).all())


def test_too_long_is_an_error():
    enc = Randomized(inner="none", max_len=8)
    with pytest.raises(ValueError, match="max_len=8"):
        enc.prepare_positions(torch.arange(9))


def test_spec_wraps_a_spec_with_options():
    assert parse_spec("randomized:inner=(rope:base=5e5,fraction=0.5),max_len=4096,seed=2") == (
        "randomized", {"inner": "rope:base=5e5,fraction=0.5", "max_len": 4096, "seed": 2}
    )
    enc = build("randomized:inner=(rope:base=5e5,fraction=0.5),max_len=4096", head_dim=16, num_heads=2, causal=True)
    assert isinstance(enc.inner, RoPE) and enc.inner.base == 5e5 and enc.inner.rot_dim == 8
    assert enc.uses_rotate and not enc.uses_bias and not enc.uses_value_term
    with pytest.raises(ValueError, match="unbalanced"):
        parse_spec("randomized:inner=(rope")


def test_hooks_delegate_to_inner():
    inner = RoPE(head_dim=8)
    enc = Randomized(inner=inner, max_len=16)
    q, k = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8)
    pos = torch.tensor([1, 5, 9])
    assert all(torch.equal(a, b) for a, b in zip(enc.rotate(q, k, pos, pos), inner.rotate(q, k, pos, pos)))


def test_an_inner_table_shorter_than_the_sampled_range_is_refused_when_built():
    """The defaults (randomized max_len 2048, learned 1024) failed at the first training batch, in 20 of 20 draws,
    with a message about a sequence of ~1,200 tokens for 10 tokens."""
    with pytest.raises(ValueError, match=r"max_len=2048\) but its inner 'learned' holds 1024 positions"):
        build("randomized:inner=learned", d_model=8)
    assert build("randomized:inner=(learned:max_len=2048)", d_model=8).max_len == 2048
    assert build("randomized:inner=learned,max_len=1024", d_model=8).max_len == 1024


@pytest.mark.parametrize("seed, err, message", [
    ("abc", TypeError, "seed must be an int, got str 'abc'"),
    (1.5, TypeError, "seed must be an int, got float 1.5"),
    (2**64, ValueError, r"seed must lie in \[-2\*\*63, 2\*\*64\), got 18446744073709551616"),
])
def test_a_bad_seed_is_named(seed, err, message):
    """The generator raised an unnamed RuntimeError."""
    with pytest.raises(err, match=message):
        Randomized(inner="rope", head_dim=8, seed=seed)
