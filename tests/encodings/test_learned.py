import pytest
import torch

from posenc.encodings import Learned, build


def test_adds_rows_of_the_table():
    enc = Learned(d_model=4, max_len=10)
    x = torch.randn(2, 3, 4)
    pos = torch.tensor([[0, 1, 2], [5, 7, 9]])
    torch.testing.assert_close(enc.embed(x, pos), x + enc.weight[pos])


def test_past_the_table_names_both_numbers():
    enc = build("learned:max_len=8", d_model=4)
    with pytest.raises(ValueError, match=r"position 8 .*max_len=8"):
        enc.embed(torch.zeros(1, 9, 4), torch.arange(9))


def test_padding_offset_as_fairseq():
    enc = Learned(d_model=4, max_len=5, padding_offset=2)
    assert enc.weight.shape == (7, 4)
    out = enc.embed(torch.zeros(1, 5, 4), torch.arange(5))
    torch.testing.assert_close(out[0], enc.weight[2:7])


def test_gradient_reaches_the_table():
    enc = Learned(d_model=4, max_len=6)
    enc.embed(torch.zeros(1, 3, 4), torch.arange(3)).sum().backward()
    assert enc.weight.grad[:3].abs().sum() > 0
    assert enc.weight.grad[3:].abs().sum() == 0



@pytest.mark.parametrize("kw, message", [
    ({"init_std": float("nan")}, "init_std must be a finite number >= 0, got nan"),  # an all-NaN table
    ({"init_std": -1.0}, "init_std must be a finite number >= 0, got -1.0"),
    ({"padding_offset": True}, "padding_offset must be an int >= 0, got True"),
    ({"padding_offset": 1.5}, "padding_offset must be an int >= 0, got 1.5"),  # a raw torch TypeError
])
def test_bad_table_options_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        Learned(d_model=4, **kw)
