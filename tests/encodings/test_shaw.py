import math

import torch

from posenc.attention import MultiHeadAttention, build_mask
from posenc.encodings import Shaw, build


def _reference(attn: MultiHeadAttention, enc: Shaw, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Shaw et al. eq. 3-4, pair by pair, causal."""
    b, t, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    q, k, v = attn.in_proj(x).split(d, dim=-1)
    q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
    out = torch.zeros(b, h, t, dh)
    kk = enc.max_distance
    for i in range(t):
        for bb in range(b):
            rel = (pos[bb] - pos[bb, i]).clamp(-kk, kk) + kk  # (T,)
            a_k, a_v = enc.key_table[rel], enc.value_table[rel]  # (T, Dh)
            e = torch.einsum("hd,jhd->hj", q[bb, :, i], k[bb].transpose(0, 1) + a_k[:, None]) / math.sqrt(dh)
            e[:, i + 1 :] = float("-inf")
            alpha = e.softmax(-1)  # (H, T)
            out[bb, :, i] = torch.einsum("hj,jhd->hd", alpha, v[bb].transpose(0, 1) + a_v[:, None])
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, d))


def test_matches_pairwise_reference():
    enc = Shaw(head_dim=8, max_distance=3, init_std=0.5)
    attn = MultiHeadAttention(d_model=16, num_heads=2, encoding=enc)
    x = torch.randn(2, 7, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 2, 3, 9, 10, 11, 30]])
    mask = build_mask(causal=True, batch=2, heads=2, q_len=7, k_len=7)
    got = attn(x, mask=mask, q_pos=pos)
    torch.testing.assert_close(got, _reference(attn, enc, x, pos), atol=1e-5, rtol=1e-5)


def test_clipping_and_gradients():
    enc = build("shaw:max_distance=2", head_dim=4)
    idx = enc.index(torch.arange(6), torch.arange(6))
    assert idx[5].tolist() == [0, 0, 0, 0, 1, 2] and idx[0].tolist() == [2, 3, 4, 4, 4, 4]
    attn = MultiHeadAttention(d_model=8, num_heads=2, encoding=enc)
    attn(torch.randn(1, 6, 8)).sum().backward()
    assert enc.key_table.grad.abs().sum() > 0 and enc.value_table.grad.abs().sum() > 0


def test_keys_only_option():
    enc = Shaw(head_dim=4, values=False)
    assert enc.value_table is None
    assert enc.value_term(torch.rand(1, 1, 3, 3), torch.arange(3), torch.arange(3)) is None
