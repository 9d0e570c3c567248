import pytest
import torch

from posenc.encodings import Kerple, build


def test_log_form_formula():
    enc = Kerple(num_heads=3, form="log")
    with torch.no_grad():
        enc.r1.copy_(torch.tensor([1.5, 0.001, 0.3]))
        enc.r2.copy_(torch.tensor([0.5, 0.2, -1.0]))
    b = enc.bias(torch.arange(6), torch.arange(6))
    r1, r2 = torch.tensor([1.5, 0.01, 0.3]), torch.tensor([0.5, 0.2, 0.01])  # clamped at 1e-2
    dist = (torch.arange(6)[None] - torch.arange(6)[:, None]).abs().float()
    torch.testing.assert_close(b, -r1[:, None, None] * torch.log(1 + r2[:, None, None] * dist))


def test_power_form_formula_and_finite_gradients():
    enc = Kerple(num_heads=2, form="power")
    with torch.no_grad():
        enc.r1.copy_(torch.tensor([0.7, 0.2]))
        enc.r2.copy_(torch.tensor([1.3, 0.5]))
    b = enc.bias(torch.arange(5), torch.arange(5))
    assert float(b[0, 4, 1].detach()) == pytest.approx(-0.7 * 3**1.3, rel=1e-5)
    assert b[1, 0, 0] == 0
    b.sum().backward()
    assert torch.isfinite(enc.r1.grad).all() and torch.isfinite(enc.r2.grad).all()
    assert enc.r2.grad.abs().sum() > 0


@pytest.mark.parametrize(("form", "r1_max", "r2_max"), [("log", 2.0, 1.0), ("power", 1.0, 2.0)])
def test_init_ranges(form, r1_max, r2_max):
    enc = build(f"kerple:form={form}", num_heads=256)
    assert 0 <= enc.r1.min() and enc.r1.max() <= r1_max and enc.r1.max() > 0.8 * r1_max
    assert 0 <= enc.r2.min() and enc.r2.max() <= r2_max and enc.r2.max() > 0.8 * r2_max


def test_bad_form():
    with pytest.raises(ValueError, match="form must be one of"):
        Kerple(num_heads=2, form="cubic")


def test_power_exponent_is_kept_at_most_two():
    """-|i - j|^r2 is conditionally positive definite for 0 < r2 <= 2 only (Chi et al. 2022)."""
    enc = Kerple(num_heads=1, form="power")
    with torch.no_grad():
        enc.r1.fill_(1.0)
        enc.r2.fill_(3.0)
    b = enc.bias(torch.tensor([3]), torch.arange(4))
    torch.testing.assert_close(b, torch.tensor([[[-9.0, -4.0, -1.0, 0.0]]]))
    assert float(enc.r2.detach()) == 2.0


@pytest.mark.parametrize("form", ["log", "power"])
def test_a_parameter_pushed_out_of_range_sits_at_the_bound_and_still_learns(form):
    """The stored values are clamped in place: a parameter below 1e-2 is moved to 1e-2 and gets a gradient there
    (a clamped copy in the graph gave it exactly zero, so it could never come back)."""
    enc = Kerple(num_heads=2, form=form)
    with torch.no_grad():
        enc.r1.copy_(torch.tensor([0.005, -1.0]))
        enc.r2.copy_(torch.tensor([0.5, 0.001]))
    enc.bias(torch.arange(5), torch.arange(5)).sum().backward()
    torch.testing.assert_close(enc.r1.detach(), torch.tensor([0.01, 0.01]))
    torch.testing.assert_close(enc.r2.detach(), torch.tensor([0.5, 0.01]))
    assert (enc.r1.grad != 0).all() and (enc.r2.grad != 0).all()


def test_clamping_leaves_an_earlier_graph_alone():
    enc = Kerple(num_heads=2)
    first = enc.bias(torch.arange(4), torch.arange(4)).sum()
    with torch.no_grad():
        enc.r1.fill_(-1.0)
    enc.bias(torch.arange(4), torch.arange(4))  # clamps r1 in place
    first.backward()  # no "modified by an inplace operation" error
    assert torch.isfinite(enc.r1.grad).all()
