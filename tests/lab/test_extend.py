import pytest

from posenc.encodings import names
from posenc.lab import results as res
from posenc.lab.extend import ExtendConfig, extend, scaled_spec
from posenc.lab.runs import RunConfig, train_run

HAVE_ROPE = "rope" in names()
TINY = dict(task="copy", d_model=16, num_heads=2, num_layers=1, dim_feedforward=32, batch_size=8, train_max=4, eval_examples=8)


@pytest.mark.parametrize("kw, message", [
    ({"factors": [-2.0]}, r"factors must be finite numbers >= 1 .*got \[-2.0\]"),
    ({"scalings": ["none", "none"]}, r"scalings must be distinct and at least one, got \['none', 'none'\]"),
    ({"finetune_lr": -1.0}, "finetune_lr must be a finite number > 0, got -1.0"),
])
def test_bad_extend_settings_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        ExtendConfig(run_dir="r", lengths=[4], **kw)


def test_scaled_spec_rejects_other_encodings_and_bad_input():
    with pytest.raises(ValueError, match="needs a RoPE run"):
        scaled_spec("sinusoidal", "linear", 2.0, 20)
    with pytest.raises(ValueError, match="scaling must be one of"):
        scaled_spec("rope", "stretch", 2.0, 20)
    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"factor must be a finite number > 0, got {bad}"):
            scaled_spec("rope", "linear", bad, 20)
    with pytest.raises(ValueError, match="unknown scalings"):
        ExtendConfig(run_dir=".", lengths=[4], scalings=["linear", "warp"])


@pytest.mark.skipif(not HAVE_ROPE, reason="the rope encoding is not registered")
def test_scaled_spec_keeps_options_and_sets_scaling():
    spec = scaled_spec("rope:base=500", "yarn", 4.0, 20)
    assert spec.startswith("rope:") and "base=500" in spec and "scaling=yarn" in spec and "factor=4.0" in spec
    assert scaled_spec("rope:base=500", "none", 4.0, 20) == "rope:base=500"


@pytest.mark.skipif(not HAVE_ROPE, reason="the rope encoding is not registered")
def test_factor_one_equals_plain_rope_for_every_scaling(tmp_path):
    run = tmp_path / "run"
    train_run(RunConfig(encoding="rope", steps=20, lr=3e-3, **TINY), run)
    table = extend(ExtendConfig(run_dir=str(run), lengths=[2, 4, 6], factors=[1.0]), tmp_path / "out")
    rows = res.read_rows(tmp_path / "out" / "results.csv")
    plain = {r.length: r.value for r in rows if r.encoding == "none"}
    assert len(plain) == 3
    for scaling in ("linear", "ntk", "dynamic", "yarn", "llama3"):
        assert {r.length: r.value for r in rows if r.encoding == f"{scaling} x1"} == plain
    assert "| none |" in table and (tmp_path / "out" / "exact_match.png").exists()


@pytest.mark.skipif(not HAVE_ROPE, reason="the rope encoding is not registered")
def test_finetune_runs_are_resumable_rows(tmp_path):
    run = tmp_path / "run"
    train_run(RunConfig(encoding="rope", steps=4, **TINY), run)
    cfg = ExtendConfig(run_dir=str(run), lengths=[4, 8], scalings=["linear"], factors=[2.0], finetune_steps=2)
    extend(cfg, tmp_path / "out")
    labels = {r.encoding for r in res.read_rows(tmp_path / "out" / "results.csv")}
    assert labels == {"linear x2", "linear x2 +ft"}
    assert (tmp_path / "out" / "finetune" / "linear_x2__ft" / "run.json").exists()
    extend(cfg, tmp_path / "out")  # everything measured: nothing added
    assert len(res.read_rows(tmp_path / "out" / "results.csv")) == 4


def test_trained_positions_count_what_attention_saw():
    from posenc.lab.extend import trained_positions

    assert trained_positions(RunConfig(train_max=20)) == 41  # x (20) SEP y (20): 41 inputs
    assert trained_positions(RunConfig(train_max=20, arch="seq2seq")) == 21  # BOS y
    assert trained_positions(RunConfig(**{**TINY, "task": "lm", "text": "f.txt", "train_min": 64, "train_max": 64})) == 64


@pytest.mark.skipif(not HAVE_ROPE, reason="the rope encoding is not registered")
def test_plain_rope_is_fine_tuned_at_the_longest_length(tmp_path):
    import json

    run = tmp_path / "run"
    train_run(RunConfig(encoding="rope", steps=2, **TINY), run)
    extend(ExtendConfig(run_dir=str(run), lengths=[4], scalings=["none"], factors=[2.0, 3.0], finetune_steps=1),
           tmp_path / "out")
    tuned = json.loads((tmp_path / "out" / "finetune" / "none__ft" / "run.json").read_text())["config"]
    assert tuned["train_max"] == 12 and tuned["encoding"] == "rope" and tuned["init_from"] == str(run)


@pytest.mark.skipif(not HAVE_ROPE, reason="the rope encoding is not registered")
def test_another_run_or_fine_tuning_in_the_same_output_is_refused(tmp_path):
    """Finished measurements were reused by (label, seed, length) alone: another run's, or other fine-tuning's,
    numbers were reported as this one's."""
    first, second = tmp_path / "a", tmp_path / "b"
    train_run(RunConfig(encoding="rope", steps=4, **TINY), first)
    train_run(RunConfig(encoding="rope", steps=6, **TINY), second)
    cfg = ExtendConfig(run_dir=str(first), lengths=[4], scalings=["none", "linear"], factors=[2.0], finetune_steps=2)
    extend(cfg, tmp_path / "out")
    with pytest.raises(ValueError, match=r"holds measurements of another run or fine-tuning \(run.steps: 4 -> 6\)"):
        extend(ExtendConfig(**{**vars(cfg), "run_dir": str(second)}), tmp_path / "out")
    with pytest.raises(ValueError, match=r"\(finetune_steps: 2 -> 3\)"):
        extend(ExtendConfig(**{**vars(cfg), "finetune_steps": 3}), tmp_path / "out")
    with pytest.raises(ValueError, match=r"\(none_finetune_factor: 2.0 -> 4.0\)"):  # plain RoPE's tune length
        extend(ExtendConfig(**{**vars(cfg), "factors": [2.0, 4.0]}), tmp_path / "out")
    extend(ExtendConfig(**{**vars(cfg), "lengths": [4, 6]}), tmp_path / "out")  # more lengths: fine
    assert len(res.read_rows(tmp_path / "out" / "results.csv")) == 2 * 4


@pytest.mark.skipif(not HAVE_ROPE, reason="the rope encoding is not registered")
@pytest.mark.parametrize("finetune_steps", [0, 2])
def test_an_unfinished_run_is_refused(tmp_path, finetune_steps):
    """A run stopped at step 2 of 6 was measured (and fine-tuned from) and reported with exit status 0."""
    from posenc.cli import main

    run = tmp_path / "run"
    cfg = RunConfig(encoding="rope", steps=6, checkpoint_every=2, **TINY)

    def stop(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, run, on_step=stop)
    message = r"unfinished run: it stopped at step 2 of 6 \(config.steps\); run `posenc compare` again"
    with pytest.raises(ValueError, match=message):
        extend(ExtendConfig(run_dir=str(run), lengths=[4], finetune_steps=finetune_steps), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    args = ["extend", str(run), "--finetune-steps", str(finetune_steps), "--out", str(tmp_path / "cli")]
    assert main(args) == 2  # the default lengths are read from the run: refused there too
    assert main([*args, "--lengths", "4"]) == 2


@pytest.mark.skipif(not HAVE_ROPE, reason="the rope encoding is not registered")
def test_a_refused_extend_leaves_the_output_directory_usable(tmp_path):
    """extend.json was written before a non-RoPE run was refused, and then refused the corrected call as
    'another run'."""
    other, rope = tmp_path / "sin", tmp_path / "rope"
    train_run(RunConfig(encoding="sinusoidal", steps=2, **TINY), other)
    train_run(RunConfig(encoding="rope", steps=2, **TINY), rope)
    with pytest.raises(ValueError, match="needs a RoPE run"):
        extend(ExtendConfig(run_dir=str(other), lengths=[4]), tmp_path / "out")
    assert not (tmp_path / "out" / "extend.json").exists()
    extend(ExtendConfig(run_dir=str(rope), lengths=[4], scalings=["none", "linear"]), tmp_path / "out")
    assert {r.encoding for r in res.read_rows(tmp_path / "out" / "results.csv")} == {"none", "linear x2"}


@pytest.mark.skipif(not HAVE_ROPE, reason="the rope encoding is not registered")
def test_a_fine_tune_context_longer_than_the_text_is_refused_first(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcd" * 500)  # 1800 training characters
    run = tmp_path / "run"
    train_run(RunConfig(**{**TINY, "encoding": "rope", "task": "lm", "text": str(text), "train_min": 8,
                           "train_max": 8, "steps": 1, "eval_tokens": 32}), run)
    cfg = ExtendConfig(run_dir=str(run), lengths=[8], scalings=["linear"], factors=[300.0], finetune_steps=1)
    with pytest.raises(ValueError, match="training context 2400 is too long"):
        extend(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "extend.json").exists()
    with pytest.raises(ValueError, match="test length 400 exceeds the 199 validation characters"):
        extend(ExtendConfig(run_dir=str(run), lengths=[8, 400], scalings=["none"]), tmp_path / "out")
    assert not (tmp_path / "out" / "extend.json").exists()
