import pathlib

import pytest
import torch
from torch import nn

from posenc.lab import results as res
from posenc.lab.compare import CompareConfig, compare
from posenc.lab.runs import RunConfig


class FakeBackend:
    """Deterministic stand-in for a trainer: 'none' generalizes, 'sinusoidal' does not; counts its calls."""

    def __init__(self, fail_at: tuple[str, int] | None = None) -> None:
        self.trained: list[tuple[str, int, int]] = []
        self.evaluated: list[tuple[str, int, int]] = []
        self.steps: dict[pathlib.Path, int] = {}
        self.fail_at = fail_at

    def steps_done(self, config, run_dir):
        return self.steps.get(run_dir, 0)

    def train(self, config, run_dir, on_step):
        start = self.steps.get(run_dir, 0)
        for s in range(start + 1, config.steps + 1):
            on_step(s)
        self.steps[run_dir] = config.steps
        self.trained.append((config.encoding, config.seed, config.steps - start))
        return nn.Identity()

    def evaluate(self, model, config, length):
        if self.fail_at == (config.encoding, length):
            raise KeyboardInterrupt
        self.evaluated.append((config.encoding, config.seed, length))
        inside = length <= config.train_max
        return 1.0 if inside or config.encoding == "none" else 0.0 + 0.01 * config.seed


def _config(**kw):
    base = RunConfig(steps=5, train_max=3)
    return CompareConfig(base=base, encodings=["none", "sinusoidal"], seeds=[0, 1], test_lengths=[1, 2, 3, 4, 5], **kw)


def test_compare_writes_csv_table_and_plot(tmp_path, check_png):
    out = compare(_config(), tmp_path, backend=FakeBackend(), progress=False)
    rows = res.read_rows(out.csv)
    assert len(rows) == 2 * 2 * 5
    assert {r.metric for r in rows} == {"exact_match"}
    assert "| `none` | 2 | 100.0% ± 0.0 | 100.0% ± 0.0 |" in out.markdown
    assert "| `sinusoidal` | 2 | 100.0% ± 0.0 | 0.5% ± 0.7 |" in out.markdown
    assert out.table.read_text().count("|") > 10
    check_png(out.plot)


def test_interrupted_compare_resumes_without_repeating_work(tmp_path):
    backend = FakeBackend(fail_at=("sinusoidal", 4))
    with pytest.raises(KeyboardInterrupt):
        compare(_config(), tmp_path, backend=backend, progress=False)
    first = len(res.read_rows(tmp_path / "results.csv"))
    assert first == 5 + 5 + 3  # none x 2 seeds, then sinusoidal seed 0 up to length 3
    backend.fail_at = None
    before = len(backend.evaluated)
    compare(_config(), tmp_path, backend=backend, progress=False)
    rows = res.read_rows(tmp_path / "results.csv")
    assert len(rows) == 20 and len({r.key for r in rows}) == 20  # nothing measured twice
    assert len(backend.evaluated) - before == 7
    # runs whose measurements were all taken are not even loaded again; the others resume at their step
    assert [t for t in backend.trained[3:]] == [("sinusoidal", 0, 0), ("sinusoidal", 1, 5)]
    compare(_config(), tmp_path, backend=backend, progress=False)
    assert len(backend.trained) == 5


def test_more_lengths_later_only_measure_the_new_ones(tmp_path):
    backend = FakeBackend()
    compare(_config(), tmp_path, backend=backend, progress=False)
    cfg = _config()
    cfg.test_lengths = [1, 2, 3, 4, 5, 6]
    n = len(backend.evaluated)
    compare(cfg, tmp_path, backend=backend, progress=False)
    assert sorted(backend.evaluated[n:]) == sorted((e, s, 6) for e in ("none", "sinusoidal") for s in (0, 1))


def test_another_setup_in_the_same_directory_is_refused(tmp_path):
    compare(_config(), tmp_path, backend=FakeBackend(), progress=False)
    other = _config()
    other.base.steps = 7
    with pytest.raises(ValueError, match="steps: 5 -> 7"):
        compare(other, tmp_path, backend=FakeBackend(), progress=False)


def test_lm_takes_one_context_length(tmp_path, capsys):
    from posenc.cli import main

    text = tmp_path / "t.txt"
    text.write_text("abc " * 200)
    assert main(["compare", "--task", "lm", "--text", str(text), "--train-lengths", "32", "64", "-e", "none",
                 "--out", str(tmp_path / "out")]) == 2  # MIN was silently ignored
    assert "--task lm trains on windows of one context length" in capsys.readouterr().err


def test_bad_encodings_fail_before_training():
    with pytest.raises(ValueError, match="not registered"):
        CompareConfig(encodings=["none", "nosuch"])
    with pytest.raises(ValueError, match="no option"):
        CompareConfig(encodings=["sinusoidal:colour=red"])
    with pytest.raises(ValueError, match="repeat"):
        CompareConfig(encodings=["none", "none"])
    # an encoder is bidirectional: a causal-only encoding is refused before the others train, not after
    with pytest.raises(ValueError, match="xpos is causal only"):
        CompareConfig(encodings=["none", "xpos"], base=RunConfig(arch="seq2seq"))


@pytest.mark.slow
def test_compare_with_the_lab_trainer_end_to_end(tmp_path, capsys):
    from posenc.cli import main

    args = ["compare", "-e", "none", "sinusoidal", "--steps", "4", "--d-model", "16", "--heads", "2", "--layers", "1",
            "--ff", "32", "--batch-size", "8", "--train-lengths", "1", "3", "--test-lengths", "2", "5",
            "--eval-examples", "4", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    rows = res.read_rows(tmp_path / "results.csv")
    assert {(r.encoding, r.length) for r in rows} == {(e, n) for e in ("none", "sinusoidal") for n in (2, 5)}
    assert all(0.0 <= r.value <= 1.0 and r.value * 4 == int(r.value * 4) for r in rows)  # k of 4 examples
    assert (tmp_path / "runs" / "none-seed0" / "model-00000004.safetensors").exists()
    assert "beyond training (5–5)" in capsys.readouterr().out
    torch.manual_seed(0)


def test_parse_lengths():
    from posenc.commands.compare import parse_lengths

    assert parse_lengths(["1-3", "10", "2"]) == [1, 2, 3, 10]
    with pytest.raises(ValueError, match="21-40"):
        parse_lengths(["twenty"])


def test_compare_threads_setting_flushes_denormals_and_checks_the_count():
    import pytest
    import torch

    from posenc.commands.compare import set_threads
    from posenc.fast import flush_denormals

    flush_denormals(False)
    threads = torch.get_num_threads()
    try:
        set_threads(0)  # 0 keeps torch's thread count
        assert torch.get_num_threads() == threads
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
        with pytest.raises(ValueError, match="-1"):
            set_threads(-1)
    finally:
        flush_denormals(False)


def test_time_to_go_keeps_a_rate_per_kind(monkeypatch):
    """Measurements are slow and training steps fast: one shared rate made a loaded run's first measurement
    predict minutes for seconds of steps."""
    import posenc.lab.compare as cmp

    clock = [0.0]
    monkeypatch.setattr(cmp.time, "monotonic", lambda: clock[0])
    bar = cmp._Progress(total_steps=100, total_measures=4, enabled=False)
    clock[0] += 3.0
    bar.step(length=1)  # one measurement: 3 s
    clock[0] += 1.0
    bar.step(step="1/100")  # one training step: 1 s
    # 99 steps x 1 s + 3 measurements x 3 s = 108 s (a shared rate of 2 s an item would say 204 s)
    assert bar.eta() == "about 1.8 min to go"


TINY_CLI = ["--d-model", "16", "--heads", "2", "--layers", "1", "--ff", "32", "--batch-size", "4", "--steps", "1",
            "--train-lengths", "1", "3", "--test-lengths", "2", "--eval-examples", "2", "--seeds", "0",
            "--no-progress", "-e", "none"]


@pytest.mark.parametrize("bad, message", [
    (["--d-model", "10", "--heads", "4"], "d_model=10 is not divisible by num_heads=4"),
    (["--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
])
def test_a_refused_compare_leaves_the_output_directory_usable(tmp_path, capsys, bad, message):
    """compare.json was written before any model was built, and then refused the corrected call as
    'another setup'."""
    from posenc.cli import main

    out = ["--out", str(tmp_path / "out")]
    assert main(["compare", *TINY_CLI, *bad, *out]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "compare.json").exists()
    assert main(["compare", *TINY_CLI, *out]) == 0
    assert len(res.read_rows(tmp_path / "out" / "results.csv")) == 1


def test_the_backend_checks_every_run_before_the_setup_is_written(tmp_path):
    class Refusing(FakeBackend):
        def check(self, configs):
            self.checked = [(c.encoding, c.seed) for c in configs]
            raise ValueError("this trainer refuses sinusoidal")

    backend = Refusing()
    with pytest.raises(ValueError, match="refuses sinusoidal"):
        compare(_config(), tmp_path / "out", backend=backend, progress=False)
    assert backend.checked == [("none", 0), ("none", 1), ("sinusoidal", 0), ("sinusoidal", 1)]
    assert not (tmp_path / "out").exists() and backend.trained == []
    compare(_config(), tmp_path / "out", backend=FakeBackend(), progress=False)  # the corrected call runs


def test_lm_lengths_that_do_not_fit_the_text_are_refused_before_training(tmp_path, capsys):
    """A context longer than the training text crashed inside torch; a test length longer than the validation
    text was refused only after a whole run had trained."""
    from posenc.cli import main

    text = tmp_path / "t.txt"
    text.write_text("abcd" * 500)  # 1800 training and 200 validation characters
    lm = ["compare", "--task", "lm", "--text", str(text), *TINY_CLI[:10], "--seeds", "0", "-e", "none", "--no-progress"]
    out = ["--out", str(tmp_path / "out")]
    assert main([*lm, "--train-lengths", "1800", "1800", "--test-lengths", "8", *out]) == 2
    assert "training context 1800 is too long for" in capsys.readouterr().err
    assert main([*lm, "--train-lengths", "8", "8", "--test-lengths", "8", "250", *out]) == 2
    assert "test length 250 exceeds the 199 validation characters" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
