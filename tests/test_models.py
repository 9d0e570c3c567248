import pytest
import torch

from posenc.models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig


def lm(encoding="sinusoidal", **kw):
    cfg = LMConfig(vocab_size=23, d_model=32, num_heads=4, num_layers=2, dim_feedforward=64, dropout=0.0,
                   encoding=encoding, **kw)
    return LanguageModel(cfg).eval()


def test_lm_shapes_and_tying():
    model = lm()
    assert model(torch.randint(0, 23, (3, 9))).shape == (3, 9, 23)
    assert model.lm_head.weight is model.embedding.weight


def test_lm_is_causal():
    model = lm()
    ids = torch.randint(0, 23, (2, 8))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 23
    torch.testing.assert_close(model(ids)[:, :5], model(changed)[:, :5])


@pytest.mark.parametrize("encoding", ["none", "sinusoidal", "learned:max_len=64"])
def test_lm_cached_equals_uncached(encoding):
    model = lm(encoding)
    ids = torch.randint(0, 23, (2, 12))
    full = model(ids)
    cache = model.new_cache()
    steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_ids_out_of_range():
    model = lm()
    with pytest.raises(ValueError, match="id 23 >= vocab size 23"):
        model(torch.tensor([[1, 23]]))
    with pytest.raises(ValueError, match="id -1 < 0"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.tensor([[1.0, 2.0]]))


def test_learned_past_table_from_model():
    model = lm("learned:max_len=8")
    with pytest.raises(ValueError, match="position 9 .*max_len=8"):
        model(torch.zeros(1, 10, dtype=torch.long))


def s2s(**kw):
    cfg = Seq2SeqConfig(src_vocab_size=19, tgt_vocab_size=17, d_model=32, num_heads=4, num_encoder_layers=2,
                        num_decoder_layers=2, dim_feedforward=64, dropout=0.0, **kw)
    return Seq2Seq(cfg).eval()


def test_seq2seq_shapes_and_batch_check():
    model = s2s()
    src = torch.randint(1, 19, (2, 6))
    src[1, 4:] = 0  # padding
    tgt = torch.randint(1, 17, (2, 5))
    logits = model(src, tgt)
    assert logits.shape == (2, 5, 17)
    with pytest.raises(ValueError, match=r"batch size of src \(2\) and tgt \(3\)"):
        model(src, torch.randint(1, 17, (3, 5)))


def test_seq2seq_padding_does_not_leak():
    model = s2s(encoding="none")
    src = torch.tensor([[5, 6, 7, 0, 0]])
    tgt = torch.tensor([[1, 2, 3]])
    a = model(src, tgt)
    b = model(torch.tensor([[5, 6, 7]]), tgt)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_seq2seq_cached_decoding_equals_full():
    model = s2s()
    src = torch.randint(1, 19, (2, 6))
    tgt = torch.randint(1, 17, (2, 7))
    full = model(src, tgt)
    memory, pad = model.encode(src)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, pad, cache=cache) for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_shared_embeddings_need_equal_vocab():
    with pytest.raises(ValueError, match="vocab 19 vs 17"):
        s2s(share_embeddings=True)


@pytest.mark.parametrize("field", ["num_encoder_layers", "num_decoder_layers"])
def test_seq2seq_names_a_bad_layer_count(field):
    cfg = Seq2SeqConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=16, num_heads=2, **{field: 0})
    with pytest.raises(ValueError, match=f"{field} must be positive, got 0"):
        Seq2Seq(cfg)


@pytest.mark.parametrize("build, error, message", [
    (lambda: LanguageModel(LMConfig(vocab_size=10, pad_id=10)), ValueError,
     "pad_id=10 is not an id of the vocabulary of 10 tokens"),
    (lambda: LanguageModel(LMConfig(vocab_size=10, pad_id=-1)), ValueError, "pad_id=-1 is not an id"),
    (lambda: Seq2Seq(Seq2SeqConfig(src_vocab_size=50, tgt_vocab_size=20, pad_id=30)), ValueError,
     "pad_id=30 is not an id of the target vocabulary of 20 tokens"),
    (lambda: Seq2Seq(Seq2SeqConfig(src_vocab_size=50, tgt_vocab_size=20, pad_id=None)), TypeError,
     "pad_id must be an int, got NoneType None"),
])
def test_a_pad_id_outside_the_vocabulary_is_named(build, error, message):
    """An id no token can have would never mask any padding (and None crashed Seq2Seq's encoder)."""
    with pytest.raises(error, match=message):
        build()


def test_dim_feedforward_is_named():
    with pytest.raises(ValueError, match="dim_feedforward must be positive, got 0"):
        LanguageModel(LMConfig(vocab_size=10, dim_feedforward=0))


def test_numpy_ints_are_ints():
    import numpy as np

    lm = LanguageModel(LMConfig(vocab_size=10, d_model=16, num_heads=2, num_layers=1, dim_feedforward=np.int64(32),
                                pad_id=np.int64(0)))
    assert lm(torch.randint(1, 10, (1, 4))).shape == (1, 4, 10)
