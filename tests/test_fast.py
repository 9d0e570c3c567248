import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from posenc.attention import MultiHeadAttention
from posenc.dropout import FastDropout
from posenc.fast import reuse_freed_memory, use_fast_path
from posenc.models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig


def small_seq2seq(dropout=0.1):
    return Seq2Seq(Seq2SeqConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, num_heads=4,
                                 num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64, dropout=dropout))


def test_switches_every_dropout_and_attention_and_back():
    model = small_seq2seq()
    plain = sum(type(m) is nn.Dropout for m in model.modules())
    use_fast_path(model)
    assert sum(type(m) is nn.Dropout for m in model.modules()) == 0
    assert sum(type(m) is FastDropout for m in model.modules()) == plain
    assert all(m.fast_dropout for m in model.modules() if isinstance(m, MultiHeadAttention))
    use_fast_path(model, enabled=False)
    assert sum(type(m) is nn.Dropout for m in model.modules()) == plain
    assert not any(m.fast_dropout for m in model.modules() if isinstance(m, MultiHeadAttention))


def test_an_in_place_dropout_is_left_as_it_is():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1, inplace=True), nn.Dropout(0.1))
    use_fast_path(model)
    assert type(model[1]) is nn.Dropout and model[1].inplace
    assert type(model[2]) is FastDropout


def test_same_outputs_and_gradients_without_dropout():
    src, tgt = torch.randint(1, 30, (3, 7)), torch.randint(1, 30, (3, 6))
    src[0, -2:] = 0  # padding: the key-padding path too
    model = small_seq2seq().eval()
    want = model(src, tgt)
    use_fast_path(model)
    torch.testing.assert_close(model(src, tgt), want, rtol=0, atol=0)
    trained = small_seq2seq(dropout=0.0).train()
    use_fast_path(trained)
    out = trained(src, tgt)
    out.sum().backward()
    grads = [p.grad.clone() for p in trained.parameters()]
    use_fast_path(trained, enabled=False)
    trained.zero_grad()
    torch.testing.assert_close(trained(src, tgt), out, rtol=0, atol=0)
    trained(src, tgt).sum().backward()
    for g, p in zip(grads, trained.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_language_model_trains_on_the_fast_path():
    torch.manual_seed(0)
    lm = use_fast_path(LanguageModel(LMConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=2,
                                              dim_feedforward=64, encoding="sinusoidal", dropout=0.1)))
    ids = torch.arange(12).repeat(2, 1)
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(lm(ids[:, :-1]).reshape(-1, 20), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _qkv(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 9, 8, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def _masks():
    from posenc.attention import build_mask

    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, -3:] = True
    return [
        build_mask(causal=True, batch=2, heads=3, q_len=9, k_len=9),  # causal only: SDPA's is_causal form
        build_mask(None, pad, causal=True, batch=2, heads=3, q_len=9, k_len=9),
        build_mask(None, pad, batch=2, heads=3, q_len=9, k_len=9),
        None,
    ]


def test_fast_math_attention_equals_the_plain_math_path():
    from posenc.attention import _math_attention

    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        for mask in _masks():
            attn_mask, is_causal = (None, False) if mask is None else mask.for_sdpa(None, dtype)
            outs, grads = [], []
            for fast in (False, True):
                q, k, v = _qkv(dtype)
                out, w = _math_attention(q, k, v, attn_mask, is_causal, mask, dropout_p=0.0, scale=None, fast=fast)
                out.float().pow(2).sum().backward()
                outs.append((out.float(), w.float()))
                grads.append([t.grad.float() for t in (q, k, v)])
            for a, b in zip(outs[0], outs[1]):
                torch.testing.assert_close(b, a, atol=tol, rtol=tol)
            for a, b in zip(grads[0], grads[1]):
                torch.testing.assert_close(b, a, atol=5 * tol, rtol=5 * tol)


def test_fast_math_attention_drops_the_weights_with_the_fast_mask():
    from posenc.attention import _math_attention
    from posenc.dropout import fast_dropout

    q, k, v = _qkv(torch.float32, seed=1)
    mask = _masks()[0]
    attn_mask, is_causal = mask.for_sdpa(None, torch.float32)
    torch.manual_seed(7)
    out, w = _math_attention(q, k, v, attn_mask, is_causal, mask, dropout_p=0.3, scale=None, fast=True)
    torch.manual_seed(7)
    want = fast_dropout(w, 0.3) @ v
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert (w.triu(1) == 0).all() and torch.allclose(w.sum(-1), torch.ones(2, 3, 9))


def test_flush_denormals_zeroes_denormals_and_leaves_attention_unchanged():
    from posenc.attention import MultiHeadAttention, build_mask
    from posenc.encodings import build
    from posenc.fast import flush_denormals

    flush_denormals(False)  # (a training run earlier in this process may have turned flushing on)
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, num_heads=4, encoding=build("alibi", num_heads=4))
    x = torch.randn(2, 300, 32) * 4
    mask = build_mask(causal=True, batch=2, heads=4, q_len=300, k_len=300)
    kept = attn(x, mask=mask)
    try:
        assert flush_denormals() is True
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
        flushed = attn(x, mask=mask)
    finally:
        flush_denormals(False)
    torch.testing.assert_close(flushed, kept, atol=1e-30, rtol=1e-6)


@pytest.mark.parametrize("option, function", [("flush_denormal", "flush_denormals"),
                                              ("reuse_memory", "reuse_freed_memory")])
def test_training_sets_the_process_up_unless_told_not_to(option, function, monkeypatch, tmp_path):
    import posenc.train.loop as loop
    from posenc.train.config import RunConfig

    calls = []
    monkeypatch.setattr(loop, function, lambda *a, **k: calls.append(1) or True)
    for flag in (True, False):
        cfg = RunConfig()
        setattr(cfg.train, option, flag)
        cfg.train.run_dir = str(tmp_path / str(flag))
        loop._setup(cfg, lambda m: None, loop.Parallel(), torch.device("cpu"))
    assert calls == [1]


def test_training_takes_the_fast_path_when_asked(tmp_path):
    import posenc.train.loop as loop
    from posenc.train.config import RunConfig

    kinds = {}
    for flag in (False, True):
        cfg = RunConfig()
        cfg.model.dropout = 0.1
        cfg.train.fast_path = flag
        cfg.train.run_dir = str(tmp_path / str(flag))
        setup = loop._setup(cfg, lambda m: None, loop.Parallel(), torch.device("cpu"))
        model = next(v for v in vars(setup).values() if isinstance(v, nn.Module))
        kinds[flag] = {type(m) for m in model.modules()} & {nn.Dropout, FastDropout}
    assert kinds == {False: {nn.Dropout}, True: {FastDropout}}


_FAULTS = """
import resource, sys, torch
from posenc.fast import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
def step():  # a training step's pattern: many large tensors allocated, written, all freed
    xs = [torch.ones(1 << 20) for _ in range(40)]  # 40 x 4 MiB
    del xs
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reused_memory_is_not_faulted_in_again_at_every_step():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}  # glibc's own

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True, env=env)
        applied, count = out.stdout.split()
        return applied, int(count)

    pages = 3 * 40 * (4 << 20) // 4096  # what three steps write
    applied, reused = faults("reuse")
    assert applied == "True" and reused < pages // 20
    _, default = faults("default")
    assert default > pages // 5  # glibc hands the freed heap back and faults it in again (1/3 to all of it)


@pytest.mark.parametrize("kw", [{"mmap_threshold": 0}, {"trim_threshold": 2**31}, {"mmap_threshold": 16e6}])
def test_reuse_freed_memory_names_a_bad_threshold(kw):
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=f"{name} must be a whole number of bytes .* got {value!r}"):
        reuse_freed_memory(**kw)


@pytest.mark.parametrize("encoding", ["sinusoidal", "alibi"])
def test_a_row_blocked_with_float32_min_stays_finite_in_bf16(encoding: str) -> None:
    """A mask that blocks with torch.finfo(torch.float32).min (not -inf) became -inf in bf16, and its row NaN on
    the fast path; it is clamped into bf16's range now, giving the finite weights float32 gives."""
    from posenc.nn import TransformerEncoder

    torch.manual_seed(0)
    model = use_fast_path(TransformerEncoder(d_model=16, nhead=2, num_layers=1, dim_feedforward=32, dropout=0.1,
                                             positional_encoding=encoding))
    mask = torch.zeros(6, 6)
    mask[0, :] = torch.finfo(torch.float32).min
    x = torch.randn(2, 6, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, mask)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_a_dropout_with_hooks_is_kept_and_its_hooks_fire() -> None:
    lm = LanguageModel(LMConfig(vocab_size=20, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32,
                                activation="relu", dropout=0.1))
    drop = lm.stack.layers[0].ff.dropout
    calls = []
    drop.register_forward_hook(lambda *args: calls.append(1))
    use_fast_path(lm).train()
    assert lm.stack.layers[0].ff.dropout is drop and type(drop) is FastDropout  # the same module, hooks and all
    lm(torch.randint(0, 20, (2, 5)))
    assert calls == [1]  # the feed-forward block did not fuse past the hooked dropout
    use_fast_path(lm, enabled=False)
    assert lm.stack.layers[0].ff.dropout is drop and type(drop) is nn.Dropout and drop._forward_hooks


def test_an_empty_batch_trains_on_the_fast_path() -> None:
    lm = use_fast_path(LanguageModel(LMConfig(vocab_size=20, d_model=16, num_heads=2, num_layers=1,
                                              dim_feedforward=32, dropout=0.1))).train()
    out = lm(torch.zeros(0, 5, dtype=torch.long))
    assert out.shape == (0, 5, 20)
    out.sum().backward()
