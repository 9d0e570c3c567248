import numpy as np
import pytest

from posenc.cli import main
from posenc.lab import arrays, plots


def test_matrix_and_similarity_pngs(tmp_path, check_png):
    m = arrays.encoding_matrix("sinusoidal", length=32, d_model=16)
    w, h = check_png(plots.plot_matrix(m, tmp_path / "m.png"))
    assert (w, h) == (700, 450)  # figsize 7 x 4.5 at 100 dpi
    assert check_png(plots.plot_similarity(arrays.position_similarity(m), tmp_path / "s.png")) == (550, 450)


def test_wavelength_bias_and_metric_pngs(tmp_path, check_png):
    lam = {"f=1": arrays.rope_wavelengths(32), "f=4": arrays.rope_wavelengths(32, factor=4)}
    assert check_png(plots.plot_wavelengths(lam, tmp_path / "w.png", context=512)) == (650, 400)
    d = np.arange(10)
    assert check_png(plots.plot_bias(d, -np.outer([0.5, 0.25], d), tmp_path / "b.png")) == (650, 400)
    x = np.arange(1, 9)
    curves = {"a": (x, x / 8, np.zeros(8)), "b": (x, 1 - x / 8, np.full(8, 0.1))}
    assert check_png(plots.plot_metric_vs_length(curves, tmp_path / "c.png", metric="acc", train_range=(1, 4)))


def test_attention_grid_png(tmp_path, check_png):
    maps = {"layer0": np.tile(np.eye(5), (2, 1, 1)), "layer1": np.full((2, 5, 5), 0.2)}
    w, h = check_png(plots.plot_attention(maps, tmp_path / "a.png", tokens=list("abcde")))
    assert w == int(100 * (2.2 * 2 + 1)) and h == int(100 * (2.2 * 2 + 0.6))


def test_non_png_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        plots.plot_matrix(np.zeros((2, 2)), tmp_path / "m.jpg")


def test_cli_plot_kinds(tmp_path, check_png, capsys):
    assert main(["plot", "matrix", "-e", "sinusoidal", "--length", "16", "--d-model", "8", "-o", str(tmp_path / "m.png")]) == 0
    assert main(["plot", "similarity", "--length", "16", "-o", str(tmp_path / "s.png")]) == 0
    assert main(["plot", "wavelength", "--factor", "1", "8", "--context", "256", "-o", str(tmp_path / "w.png")]) == 0
    for name in ("m", "s", "w"):
        check_png(tmp_path / f"{name}.png")
    assert "wrote" in capsys.readouterr().out
    # a bias plot of an encoding without a bias is a clean error, not a traceback
    assert main(["plot", "bias", "-e", "sinusoidal", "-o", str(tmp_path / "b.png")]) == 2
    assert "adds no bias" in capsys.readouterr().err
    assert main(["plot", "wavelength", "--context", "-5", "-o", str(tmp_path / "w.png")]) == 2  # was drawn
    assert "--context must be >= 1, got -5" in capsys.readouterr().err


def test_cli_attention_of_a_run(tmp_path, check_png, capsys):
    from posenc.lab.runs import RunConfig, train_run

    cfg = RunConfig(encoding="sinusoidal", steps=2, d_model=16, num_heads=2, num_layers=2, dim_feedforward=32, batch_size=4)
    train_run(cfg, tmp_path / "run")
    out = tmp_path / "att.png"
    assert main(["plot", "attention", str(tmp_path / "run"), "-i", "3 1 4 1 5", "-o", str(out)]) == 0
    w, h = check_png(out)
    assert (w, h) == (int(100 * (2.2 * 2 + 1)), int(100 * (2.2 * 2 + 0.6)))  # 2 layers x 2 heads
    assert main(["plot", "attention", str(tmp_path / "run"), "-i", "3 99", "-o", str(out)]) == 2
    capsys.readouterr()
    assert main(["plot", "attention", str(tmp_path / "run"), "-i", "", "-o", str(out)]) == 2
    assert "the input is empty" in capsys.readouterr().err  # it said "ids must hold integer token ids"


def test_cli_attention_refuses_an_unfinished_run(tmp_path, capsys):
    """A run stopped at step 2 of 6 was pictured as if trained."""
    from posenc.lab.runs import RunConfig, train_run

    cfg = RunConfig(steps=6, checkpoint_every=2, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32,
                    batch_size=4)

    def stop(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "run", on_step=stop)
    assert main(["plot", "attention", str(tmp_path / "run"), "-i", "3 1", "-o", str(tmp_path / "a.png")]) == 2
    assert "stopped at step 2 of 6 (config.steps); run `posenc compare` again" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


def _texts(labels):
    return [t.get_text() for t in labels]


def test_seq2seq_maps_label_source_and_target_by_kind(tmp_path):
    """The cross-attention map's source axis was labelled with target tokens (one more than it has columns)."""
    from posenc.lab.runs import RunConfig, encode_input, train_run

    cfg = RunConfig(arch="seq2seq", task="reverse", steps=1, d_model=16, num_heads=2, num_layers=1,
                    dim_feedforward=32, batch_size=4)
    model = train_run(cfg, tmp_path / "run")
    picture = encode_input(cfg, "3 1 4")
    assert picture.source_labels == ["3", "1", "4"] and picture.labels == ["BOS", "4", "1", "3"]
    maps = arrays.attention_maps(model, *picture.inputs)
    axes = arrays.attention_axes(model, maps, labels=picture.labels, source_labels=picture.source_labels)
    kinds = {name: a.kind for name, a in axes.items()}
    assert kinds == {"encoder.layers.0.self_attn": "encoder self", "decoder.layers.0.self_attn": "decoder self",
                     "decoder.layers.0.cross_attn": "cross"}
    cross = axes["decoder.layers.0.cross_attn"]
    assert cross.queries == ["BOS", "4", "1", "3"] and cross.keys == ["3", "1", "4"]
    assert maps["decoder.layers.0.cross_attn"].shape == (2, 4, 3)  # (H, target queries, source keys)
    assert axes["encoder.layers.0.self_attn"].keys == ["3", "1", "4"] == axes["encoder.layers.0.self_attn"].queries
    assert axes["decoder.layers.0.self_attn"].keys == picture.labels
    fig = plots.attention_figure(maps, axes=axes)
    rows = {name: fig.axes[2 * i] for i, name in enumerate(maps)}  # the first head of each row carries the labels
    for name, a in axes.items():
        assert _texts(rows[name].get_xticklabels()) == a.keys and _texts(rows[name].get_yticklabels()) == a.queries
        assert a.kind in rows[name].get_ylabel()
    with pytest.raises(ValueError, match=r"'decoder.layers.0.cross_attn' has 4 queries x 3 keys, but 4 query labels "
                                         r"and 4 key labels"):
        cross_only = {"decoder.layers.0.cross_attn": maps["decoder.layers.0.cross_attn"]}
        plots.plot_attention(cross_only, tmp_path / "a.png", tokens=picture.labels)  # target labels on source keys
    assert not (tmp_path / "a.png").exists()


def test_decoder_only_maps_label_both_axes_with_the_sequence():
    from posenc.lab.runs import RunConfig, encode_input, make_model

    cfg = RunConfig(d_model=16, num_heads=2, num_layers=1, dim_feedforward=32)
    model = make_model(cfg, 20)
    picture = encode_input(cfg, "3 1")
    assert picture.source_labels is None and picture.labels == ["3", "1", "SEP", "3", "1"]
    maps = arrays.attention_maps(model, *picture.inputs)
    (a,) = arrays.attention_axes(model, maps, labels=picture.labels).values()
    assert (a.kind, a.queries, a.keys) == ("self", picture.labels, picture.labels)
