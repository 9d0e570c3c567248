"""What every family must do: relative families are shift invariant, every family runs with explicit
non-contiguous positions in every stack and model, gradients reach its parameters, and cached decoding equals
the full forward."""

import pytest
import torch

from posenc.attention import MultiHeadAttention, build_mask
from posenc.encodings import build, names
from posenc.models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig
from posenc.stacks import TransformerEncoder

SPECS = {
    "none": "none",
    "sinusoidal": "sinusoidal",
    "learned": "learned:max_len=128",
    "rope": "rope",
    "xpos": "xpos",
    "alibi": "alibi",
    "t5": "t5",
    "shaw": "shaw:max_distance=4",
    "kerple": "kerple",
    "fire": "fire",
    "randomized": "randomized:inner=rope,max_len=128",
}
ROPE_VARIANTS = [
    "rope:layout=half,fraction=0.5",
    "rope:scaling=linear,factor=4",
    "rope:scaling=ntk,factor=4",
    "rope:scaling=yarn,factor=4,original_max_len=16",
    "rope:scaling=llama3,factor=4,original_max_len=16",
]
RELATIVE = ["rope", "xpos", "alibi", "t5", "shaw", "kerple", "fire", "kerple:form=power", *ROPE_VARIANTS]
CAUSAL_ONLY = {"xpos"}


def test_every_registered_family_is_covered():
    assert set(SPECS) == set(names())


@pytest.mark.parametrize("spec", RELATIVE)
def test_shift_invariance(spec):
    attn = MultiHeadAttention(d_model=32, num_heads=4, encoding=build(spec, d_model=32, num_heads=4, head_dim=8, causal=True))
    attn.capture_weights = True
    with torch.no_grad():  # make position terms matter: larger bias/table values
        for p in attn.encoding.parameters():
            p.mul_(10) if p.dim() > 0 else None
    x = torch.randn(2, 9, 32)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 3, 4, 5, 9, 10, 20, 21, 40]])
    mask = build_mask(causal=True, batch=2, heads=4, q_len=9, k_len=9)
    out = attn(x, mask=mask, q_pos=pos)
    w = attn.last_weights
    out2 = attn(x, mask=mask, q_pos=pos + 57)
    torch.testing.assert_close(attn.last_weights, w, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-4)
    # ... and the positions matter: another spacing changes the weights.
    attn(x, mask=mask, q_pos=pos * 2)
    assert not torch.allclose(attn.last_weights, w, atol=1e-4)


def _check_grads(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if "encoding" in name:
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
            assert p.grad.abs().sum() > 0, name


def _positions(batch: int, length: int) -> torch.Tensor:
    rows = [torch.arange(length) * 2 + 1, torch.cat([torch.zeros(3, dtype=torch.long), torch.arange(length - 3) + 5])]
    return torch.stack(rows[:batch]).t().contiguous().t()  # (B, T), non-contiguous


@pytest.mark.parametrize("name", sorted(SPECS))
def test_encoder_self_attention_with_explicit_positions(name):
    causal = name in CAUSAL_ONLY
    enc = TransformerEncoder(d_model=32, nhead=4, num_layers=2, dim_feedforward=64, dropout=0.0,
                             positional_encoding=SPECS[name], causal=causal)
    pos = _positions(2, 10)
    assert not pos.is_contiguous()
    out = enc(torch.randn(2, 10, 32), positions=pos)
    assert out.shape == (2, 10, 32) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    _check_grads(enc)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_seq2seq_and_language_model(name):
    enc_spec = "alibi" if name in CAUSAL_ONLY else SPECS[name]  # the encoder is bidirectional
    s2s = Seq2Seq(Seq2SeqConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=32, num_heads=4, num_encoder_layers=1,
                                num_decoder_layers=2, dim_feedforward=64, dropout=0.0, encoding=enc_spec,
                                decoder_encoding=SPECS[name]))
    src, tgt = torch.randint(1, 20, (2, 9)), torch.randint(1, 20, (2, 10))
    logits = s2s(src, tgt, src_positions=_positions(2, 9), tgt_positions=_positions(2, 10))
    assert logits.shape == (2, 10, 20)
    logits.logsumexp(-1).sum().backward()
    _check_grads(s2s.decoder)

    lm = LanguageModel(LMConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=2, dim_feedforward=64,
                                dropout=0.0, encoding=SPECS[name]))
    lm(torch.randint(0, 20, (2, 10)), positions=_positions(2, 10)).logsumexp(-1).sum().backward()
    _check_grads(lm)


@pytest.mark.parametrize("spec", sorted(SPECS.values()) + ROPE_VARIANTS)
def test_cached_decoding_equals_full_forward(spec):
    lm = LanguageModel(LMConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=2, dim_feedforward=64,
                                dropout=0.0, encoding=spec)).eval()
    ids = torch.randint(0, 20, (2, 14))
    with torch.no_grad():
        full = lm(ids)
        cache = lm.new_cache()
        steps = [lm(ids[:, :5], cache=cache)]
        steps += [lm(ids[:, t : t + 1], cache=cache) for t in range(5, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_cached_decoding_dynamic_ntk_equals_prefix_forward(num_layers):
    """One layer: every cached step equals the uncached forward of its prefix. Deeper: the lower layers' states
    of earlier tokens stay those computed when they were decoded, so the equality holds while the length is within
    the trained one (as documented in posenc.encodings.rotary)."""
    lm = LanguageModel(LMConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=num_layers, dim_feedforward=64,
                                dropout=0.0, encoding="rope:scaling=dynamic,factor=2,original_max_len=6")).eval()
    ids = torch.randint(0, 20, (2, 14))
    last = 14 if num_layers == 1 else 6
    with torch.no_grad():
        cache = lm.new_cache()
        lm(ids[:, :4], cache=cache)
        for t in range(4, last):
            step = lm(ids[:, t : t + 1], cache=cache)[:, 0]
            prefix = lm(ids[:, : t + 1])[:, -1]
            torch.testing.assert_close(step, prefix, atol=1e-5, rtol=1e-5)
        # Past the trained length a full forward of the whole sequence differs (its length is the final one).
        assert not torch.allclose(lm(ids)[:, 8], lm(ids[:, :9])[:, -1], atol=1e-4)


def test_randomized_training_changes_positions_eval_does_not():
    lm = LanguageModel(LMConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=1, dim_feedforward=64,
                                dropout=0.0, encoding="randomized:inner=rope,max_len=512,seed=0"))
    ids = torch.randint(0, 20, (1, 12))
    plain = LanguageModel(LMConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=1, dim_feedforward=64,
                                   dropout=0.0, encoding="rope"))
    plain.load_state_dict(lm.state_dict())
    lm.eval(), plain.eval()
    torch.testing.assert_close(lm(ids), plain(ids))
    lm.train()
    assert not torch.allclose(lm(ids), plain(ids), atol=1e-4)


@pytest.mark.parametrize("spec", ["fire", "fire:causal=false", "xpos", "randomized", "randomized:inner=fire"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_empty_input_gives_an_empty_output(spec, mode):
    """T = 0 gives (B, 0, D) as in every other family, alone and as a cached step; the empty step leaves the cache
    as it was (in eval, the next step equals the uncached forward). FIRE and xPos took the max of no positions,
    and randomized's empty slice of key positions took all of them."""
    stack = TransformerEncoder(d_model=16, nhead=2, num_layers=2, dim_feedforward=32, dropout=0.0,
                               positional_encoding=spec, causal=True)
    getattr(stack, mode)()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert stack(x[:, :0]).shape == (2, 0, 16)
        cache = stack.new_cache()
        stack(x[:, :3], cache=cache)
        assert stack(x[:, 3:3], cache=cache).shape == (2, 0, 16)
        rest = stack(x[:, 3:], cache=cache)
        if mode == "eval":
            torch.testing.assert_close(rest, stack(x)[:, 3:], atol=1e-5, rtol=1e-5)
