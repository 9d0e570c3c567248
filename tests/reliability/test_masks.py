"""Masks that leave a query with no key: all-padding rows, and causal + left padding (the first, padded query of
a left-padded row sees only padding). Through the fused and the plain math attention paths, in train and eval mode:
outputs and gradients finite, and the tokens under padding do not change the loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from posenc.attention import MultiHeadAttention
from posenc.models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig
from posenc.train.metrics import token_loss

PAD, V = 0, 11


def _paths(model: nn.Module, use_math: bool) -> nn.Module:
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.use_math = use_math
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (B, T): a full row, a left-padded row, a right-padded row, an all-padding row; targets; padding mask."""
    ids = torch.tensor([[3, 4, 5, 6, 7, 8], [0, 0, 0, 5, 6, 7], [4, 5, 6, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    pad = ids == PAD
    targets = torch.roll(ids, -1, dims=1).masked_fill(pad | torch.roll(pad, -1, dims=1), PAD)
    targets[:, -1] = PAD
    return ids, targets, pad


def _check_grads(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert bool(torch.isfinite(p.grad).all()), f"gradient of {name} is not finite"


@pytest.mark.parametrize("use_math", [False, True], ids=["fused", "math"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("encoding", ["none", "sinusoidal", "learned"])
def test_lm_rows_without_keys(use_math: bool, training: bool, encoding: str) -> None:
    torch.manual_seed(0)
    model = _paths(LanguageModel(LMConfig(vocab_size=V, d_model=16, num_heads=2, num_layers=2, dim_feedforward=32,
                                          dropout=0.1 if training else 0.0, encoding=encoding, pad_id=PAD)), use_math)
    model.train(training)
    ids, targets, pad = _batch()
    logits = model(ids)  # (B, T, V)
    assert bool(torch.isfinite(logits).all())
    loss = token_loss(logits, targets, pad_id=PAD)
    assert bool(torch.isfinite(loss))
    loss.backward()
    _check_grads(model)


@pytest.mark.parametrize("use_math", [False, True], ids=["fused", "math"])
def test_padded_tokens_do_not_change_the_loss(use_math: bool) -> None:
    torch.manual_seed(0)
    model = _paths(LanguageModel(LMConfig(vocab_size=V, d_model=16, num_heads=2, num_layers=2, dim_feedforward=32,
                                          dropout=0.0, encoding="sinusoidal", pad_id=PAD)), use_math)
    ids, targets, pad = _batch()
    other = ids.masked_scatter(pad, torch.randint(1, V, (int(pad.sum()),)))  # junk under the padding
    a = token_loss(model(ids, padding_mask=pad), targets, pad_id=PAD)
    b = token_loss(model(other, padding_mask=pad), targets, pad_id=PAD)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert float(a.detach()) > 0.0  # there are real targets, and they are scored


@pytest.mark.parametrize("use_math", [False, True], ids=["fused", "math"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_seq2seq_all_padding_source(use_math: bool, training: bool) -> None:
    """A source row of padding only: the decoder's cross-attention has no key for any query of that row."""
    torch.manual_seed(0)
    model = _paths(Seq2Seq(Seq2SeqConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=16, num_heads=2,
                                         num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
                                         dropout=0.1 if training else 0.0, pad_id=PAD)), use_math)
    model.train(training)
    src = torch.tensor([[3, 4, 5, 0], [0, 0, 0, 0]])
    tgt = torch.tensor([[1, 6, 7, 0], [1, 0, 0, 0]])
    targets = torch.tensor([[6, 7, 2, 0], [2, 0, 0, 0]])
    logits = model(src, tgt, tgt_padding_mask=tgt == PAD)
    assert bool(torch.isfinite(logits).all())
    loss = token_loss(logits, targets, pad_id=PAD)
    loss.backward()
    assert bool(torch.isfinite(loss))
    _check_grads(model)
