import pytest
import torch

from posenc.nn import Transformer, TransformerEncoder


def _pair(norm_first, batch_first=True, activation="relu"):
    ref = torch.nn.Transformer(
        d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64, dropout=0.0,
        activation=activation, batch_first=batch_first, norm_first=norm_first,
    )
    return ref, Transformer.from_torch(ref, positional_encoding="none")


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_from_torch_matches_torch_with_masks_in_train_mode(norm_first, activation):
    ref, ours = _pair(norm_first, activation=activation)
    ref.train(), ours.train()
    src, tgt = torch.randn(3, 7, 32), torch.randn(3, 5, 32)
    spad = torch.zeros(3, 7, dtype=torch.bool)
    spad[1, 4:] = True
    tpad = torch.zeros(3, 5, dtype=torch.bool)
    tpad[2, 3:] = True
    tmask = ref.generate_square_subsequent_mask(5)
    kwargs = dict(
        tgt_mask=tmask, src_key_padding_mask=spad, tgt_key_padding_mask=tpad, memory_key_padding_mask=spad
    )
    want = ref(src, tgt, **kwargs)
    got = ours(src, tgt, **kwargs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The bool form of the causal mask means the same.
    got_bool = ours(src, tgt, **{**kwargs, "tgt_mask": torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)})
    torch.testing.assert_close(got_bool, want, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_from_torch_sequence_first():
    ref, ours = _pair(False, batch_first=False)
    ref.eval(), ours.eval()
    src, tgt = torch.randn(7, 2, 32), torch.randn(5, 2, 32)
    mask = ref.generate_square_subsequent_mask(5)
    torch.testing.assert_close(ours(src, tgt, tgt_mask=mask), ref(src, tgt, tgt_mask=mask), atol=1e-5, rtol=1e-5)


def test_gradients_match_torch():
    ref, ours = _pair(True)
    src, tgt = torch.randn(2, 4, 32), torch.randn(2, 3, 32)
    ref(src, tgt, tgt_is_causal=True, tgt_mask=ref.generate_square_subsequent_mask(3)).square().sum().backward()
    ours(src, tgt, tgt_is_causal=True).square().sum().backward()
    g_ref = ref.encoder.layers[0].self_attn.in_proj_weight.grad
    g_ours = ours.encoder.layers[0].self_attn.in_proj.weight.grad
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=1e-4)


def test_sinusoidal_changes_the_output_and_is_order_aware():
    model = Transformer(32, 4, 1, 1, 64, 0.0, batch_first=True, positional_encoding="sinusoidal")
    nope = Transformer(32, 4, 1, 1, 64, 0.0, batch_first=True, positional_encoding="none")
    nope.load_state_dict(model.state_dict())
    src, tgt = torch.randn(1, 6, 32), torch.randn(1, 3, 32)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    # Without positions the encoder cannot tell a permuted source from the original.
    torch.testing.assert_close(nope(src[:, perm], tgt), nope(src, tgt), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(src[:, perm], tgt), model(src, tgt), atol=1e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="d_model=30 is not divisible by nhead=4"):
        Transformer(30, 4)
    model = Transformer(16, 2, 1, 1, 32, batch_first=True)
    with pytest.raises(ValueError, match=r"batch size of src \(2\) and tgt \(3\)"):
        model(torch.randn(2, 4, 16), torch.randn(3, 4, 16))
    with pytest.raises(ValueError, match="3 dimensions"):
        model(torch.randn(4, 16), torch.randn(4, 16))
    with pytest.raises(ValueError, match="width 8, expected 16"):
        model(torch.randn(2, 4, 8), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="key padding mask must be"):
        model(torch.randn(2, 4, 16), torch.randn(2, 4, 16), src_key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))


def test_per_layer_encodings_and_concat_only_first():
    enc = TransformerEncoder(d_model=16, nhead=2, num_layers=3, positional_encoding=["sinusoidal", "none", "none"])
    assert enc.embed_at == [0]
    with pytest.raises(ValueError, match="must be in layer 0"):
        TransformerEncoder(d_model=16, nhead=2, num_layers=2, positional_encoding=["none", "sinusoidal:combine=concat"])
    concat = TransformerEncoder(d_model=16, nhead=2, num_layers=2, positional_encoding="sinusoidal:combine=concat,dim=6")
    assert concat(torch.randn(2, 3, 10)).shape == (2, 3, 16)


def test_left_padding_counts_real_tokens():
    enc = TransformerEncoder(d_model=16, nhead=2, num_layers=1, dropout=0.0, positional_encoding="sinusoidal")
    enc.eval()
    x = torch.randn(1, 3, 16)
    padded = torch.cat([torch.randn(1, 2, 16), x], dim=1)
    pad = torch.tensor([[True, True, False, False, False]])
    torch.testing.assert_close(enc(padded, src_key_padding_mask=pad)[:, 2:], enc(x), atol=1e-5, rtol=1e-5)
    # the float form of the same padding (0 / -inf) counts the same positions (it counted the pads too)
    float_pad = torch.zeros(1, 5).masked_fill(pad, float("-inf"))
    torch.testing.assert_close(enc(padded, src_key_padding_mask=float_pad)[:, 2:], enc(x), atol=1e-5, rtol=1e-5)



def _torch_stack(layer_cls, n, **kw):
    """A torch stack of ``n`` fresh layers. (torch's stacks deep-copy one layer, and a deep-copied
    TransformerDecoderLayer applies ReLU whatever module activation it was given: its ``__setstate__`` sets
    ``activation = F.relu``, which shadows the module.)"""
    encoder = layer_cls is torch.nn.TransformerEncoderLayer
    stack_cls = torch.nn.TransformerEncoder if encoder else torch.nn.TransformerDecoder
    stack = stack_cls(layer_cls(16, 2, 32, 0.0, batch_first=True, **kw), n, norm=torch.nn.LayerNorm(16))
    stack.layers = torch.nn.ModuleList(layer_cls(16, 2, 32, 0.0, batch_first=True, **kw) for _ in range(n))
    return stack


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_from_torch_keeps_a_module_activation():
    """nn.GELU(approximate="tanh") in every layer: it was replaced by exact GELU (0.46 off)."""
    act = dict(activation=torch.nn.GELU(approximate="tanh"))
    ref = torch.nn.Transformer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0,
                               custom_encoder=_torch_stack(torch.nn.TransformerEncoderLayer, 2, **act),
                               custom_decoder=_torch_stack(torch.nn.TransformerDecoderLayer, 2, **act))
    ours = Transformer.from_torch(ref)
    src, tgt = torch.randn(2, 5, 16) * 3, torch.randn(2, 4, 16) * 3
    torch.testing.assert_close(ours.train()(src, tgt), ref.train()(src, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_from_torch_refuses_layers_with_other_settings():
    """A custom decoder with norm_first and GELU was converted with the encoder's settings (0.62 off)."""
    ref = torch.nn.Transformer(16, 2, 1, 1, 32, 0.0, batch_first=True, custom_decoder=_torch_stack(
        torch.nn.TransformerDecoderLayer, 1, norm_first=True, activation="gelu"))
    with pytest.raises(ValueError, match=r"layer 1 \(encoder layers first\) differs: .*'norm_first': \(False, True\)"):
        Transformer.from_torch(ref)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_from_torch_keeps_dtype_and_has_torchs_dropouts():
    ref = torch.nn.Transformer(16, 2, 1, 1, 32, 0.3, batch_first=True).double()
    ours = Transformer.from_torch(ref)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    src, tgt = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 4, 16, dtype=torch.float64)
    torch.testing.assert_close(ours.eval()(src, tgt), ref.eval()(src, tgt), atol=1e-12, rtol=0)  # float64 kept
    # no dropout on the stacks' inputs, which torch's Transformer does not have
    assert [m.p for m in ours.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0] == \
        [m.p for m in ref.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]


def test_a_module_activation_is_one_per_layer():
    ours = Transformer(8, 2, 2, 2, 16, 0.0, activation=torch.nn.PReLU(), positional_encoding="none")
    names = [n for n, _ in ours.named_parameters() if "activation" in n]
    assert len(names) == 4  # was one PReLU weight shared by all four layers


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_memory_is_causal_is_a_hint_with_a_mask_and_refused_with_a_cache():
    ref, ours = _pair(False)
    src, tgt = torch.randn(2, 4, 32), torch.randn(2, 6, 32)  # T = 6 > S = 4
    mask = torch.triu(torch.full((6, 4), float("-inf")), 1)
    want = ref.eval()(src, tgt, memory_mask=mask, memory_is_causal=True)
    torch.testing.assert_close(ours.eval()(src, tgt, memory_mask=mask, memory_is_causal=True), want,
                               atol=1e-5, rtol=1e-5)
    memory = ours.encoder(src)
    with pytest.raises(ValueError, match="memory_is_causal with a cache"):
        ours.decoder(tgt[:, :1], memory, memory_is_causal=True, cache=ours.decoder.new_cache())


def test_a_shared_absolute_encoding_embeds_at_its_first_layer_only():
    """["sinusoidal", "none", "sinusoidal"] builds one module for layers 0 and 2: it is added once, at layer 0,
    as with ["sinusoidal", "none", "none"] (it was added again at layer 2). A distinct one embeds at its layer."""
    kw = dict(d_model=16, nhead=2, num_layers=3, dim_feedforward=32, dropout=0.0)
    shared = TransformerEncoder(positional_encoding=["sinusoidal", "none", "sinusoidal"], **kw).eval()
    once = TransformerEncoder(positional_encoding=["sinusoidal", "none", "none"], **kw).eval()
    once.load_state_dict(shared.state_dict())
    assert shared.embed_at == [0]
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(shared(x), once(x), rtol=0, atol=0)
    distinct = TransformerEncoder(positional_encoding=["sinusoidal", "none", "sinusoidal:base=5000"], **kw)
    assert distinct.embed_at == [0, 2]


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_the_constructor_defaults_are_torchs():
    """A model swapped in for torch's reads the same (S, B, D) tensors: batch_first is False by default (it was
    True, and (S, B, D) inputs with S == T were silently read as (B, S, D)); device and dtype are taken."""
    torch.manual_seed(0)
    ref = torch.nn.Transformer(16, 2, 1, 1, 32, 0.0).double().eval()
    ours = Transformer(16, 2, 1, 1, 32, 0.0, positional_encoding="none", dtype=torch.float64).eval()
    assert ours.batch_first is ref.batch_first is False
    assert {p.dtype for p in ours.parameters()} == {torch.float64}
    ours.load_state_dict(Transformer.from_torch(ref).state_dict())
    src, tgt = torch.randn(6, 2, 16, dtype=torch.float64), torch.randn(6, 2, 16, dtype=torch.float64)  # (S, B, D)
    torch.testing.assert_close(ours(src, tgt), ref(src, tgt), atol=1e-12, rtol=0)
