import re

import pytest
import torch

from posenc import encodings
from posenc.encodings import PositionalEncoding, build, build_per_layer, names, parse_spec


def test_core_names_registered():
    assert {"none", "sinusoidal", "learned"} <= set(names())


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown positional encoding 'sinusoid'.*sinusoidal"):
        build("sinusoid", d_model=8)


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match="no option 'layot'.*layout"):
        build("sinusoidal:layot=concat", d_model=8)
    with pytest.raises(ValueError, match="no option 'size'"):
        build("learned", d_model=8, size=3)


def test_spec_values_take_declared_types():
    name, opts = parse_spec("sinusoidal: layout=concat, scale_input=true, base=5e3, dim=4")
    assert name == "sinusoidal"
    assert opts == {"layout": "concat", "scale_input": True, "base": 5000.0, "dim": 4}
    assert isinstance(opts["dim"], int) and isinstance(opts["base"], float)


def test_malformed_spec():
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("sinusoidal:concat")
    with pytest.raises(ValueError, match="non-empty"):
        parse_spec("")


def test_context_not_taken_is_ignored_and_missing_is_named():
    enc = build("none", d_model=8, num_heads=2, causal=True)
    assert isinstance(enc, encodings.NoPE)
    with pytest.raises(ValueError, match="needs d_model"):
        build("sinusoidal")


def test_nope_is_identity():
    enc = PositionalEncoding()
    x = torch.randn(2, 3, 4)
    q, k = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    pos = torch.arange(3)
    assert enc.embed(x, pos) is x
    assert enc.rotate(q, k, pos, pos) == (q, k)
    assert enc.bias(pos, pos) is None
    assert not (enc.uses_embed or enc.uses_rotate or enc.uses_bias)


def test_per_layer_sharing():
    shared = build_per_layer("learned", 3, d_model=4)
    assert shared[0] is shared[1] is shared[2]
    per = build_per_layer(["learned", "none", "learned"], 3, d_model=4)
    assert per[0] is per[2] and per[1] is not per[0]
    with pytest.raises(ValueError, match="2 per-layer encodings for a stack of 3"):
        build_per_layer(["none", "none"], 3)


def test_options_lists_defaults():
    opts = encodings.options("sinusoidal")
    assert opts["layout"] == "interleaved" and opts["combine"] == "add"
    assert "d_model" not in opts


def test_parse_layers():
    from posenc.encodings import parse_layers

    assert parse_layers("rope:base=5e5,scaling=yarn") == "rope:base=5e5,scaling=yarn"
    assert parse_layers("rope*3|none") == ["rope", "rope", "rope", "none"]
    assert parse_layers("rope*2") == ["rope", "rope"]
    with pytest.raises(ValueError, match="empty layer spec"):
        parse_layers("rope||none")


def test_parenthesised_values_hold_commas_and_colons():
    assert parse_spec("randomized:inner=(rope:base=5e5,layout=half),seed=3") == (
        "randomized", {"inner": "rope:base=5e5,layout=half", "seed": 3}
    )
    with pytest.raises(ValueError, match="unbalanced"):
        parse_spec("randomized:inner=rope)")


def test_content_bias_hook_is_added_to_the_logits():
    from posenc.attention import MultiHeadAttention

    class QueryNorm(PositionalEncoding):
        def content_bias(self, q, q_pos, k_pos):
            return q.sum(-1, keepdim=True).expand(*q.shape[:3], k_pos.shape[-1]) * (k_pos == 0)  # favour key 0

    enc = QueryNorm()
    assert enc.uses_content_bias and not PositionalEncoding().uses_content_bias
    attn = MultiHeadAttention(d_model=8, num_heads=2, encoding=enc)
    attn.capture_weights = True
    plain = MultiHeadAttention(d_model=8, num_heads=2)
    plain.load_state_dict(attn.state_dict())
    plain.capture_weights = True
    x = torch.randn(1, 4, 8)
    attn(x), plain(x)
    q = attn.in_proj(x)[..., :8].view(1, 4, 2, 4).transpose(1, 2)
    logits = plain.last_weights.log()
    logits[..., 0] += q.sum(-1)
    torch.testing.assert_close(attn.last_weights, logits.softmax(-1), atol=1e-5, rtol=1e-5)


BOOLEAN_WORDS = "(true/false, 1/0, yes/no, on/off, any case)"


@pytest.mark.parametrize("spec, context, option, word", [
    ("alibi:causal=flase", {"num_heads": 4}, "causal", "flase"),
    ("shaw:values=nope", {"head_dim": 8}, "values", "nope"),
    ("sinusoidal:scale_input=no thanks", {"d_model": 8}, "scale_input", "no thanks"),
])
def test_a_misspelled_boolean_in_a_spec_is_named(spec, context, option, word):
    """The word used to be passed on as a string, which is truthy: causal=flase built a causal encoding."""
    message = f"option '{option}' in encoding spec '{spec}' must be a boolean {BOOLEAN_WORDS}, got '{word}'"
    with pytest.raises(ValueError, match=re.escape(message)):
        build(spec, **context)


def test_boolean_words_in_a_spec_are_read_in_any_case():
    assert build("alibi:causal=Off", num_heads=4).causal is False
    assert build("shaw:values=NO", head_dim=8).values is False
    assert build("sinusoidal:scale_input=yes", d_model=16).scale == 4.0


@pytest.mark.parametrize("spec, context, message", [
    ("rope:base=abc", {"head_dim": 8}, "option 'base' in encoding spec 'rope:base=abc' must be a number, got 'abc'"),
    ("alibi:num_heads=four", {}, "option 'num_heads' in encoding spec 'alibi:num_heads=four' must be an int, "
                                 "got 'four'"),
    ("rope:scaling=linear,factor=2,original_max_len=1.5", {"head_dim": 8},
     "option 'original_max_len' in encoding spec 'rope:scaling=linear,factor=2,original_max_len=1.5' must be an int, "
     "got '1.5'"),
    ("randomized:seed=abc", {"head_dim": 8},
     "option 'seed' in encoding spec 'randomized:seed=abc' must be an int, got 'abc'"),
])
def test_an_unreadable_number_in_a_spec_is_named(spec, context, message):
    """``rope:base=abc`` used to reach the constructor as text and fail there with an unnamed TypeError."""
    with pytest.raises(ValueError, match=re.escape(message)):
        build(spec, **context)
