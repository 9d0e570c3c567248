import pytest
import torch

from posenc.lab.runs import RunConfig, evaluate, is_finished, load_run, train_run
from posenc.lab.tasks import IGNORE, CharText, SequenceTask

TINY = dict(task="copy", d_model=16, num_heads=2, num_layers=1, dim_feedforward=32, batch_size=8, train_max=4, eval_examples=6)


def test_decoder_layout_of_a_copy_example():
    task = SequenceTask("reverse", 5)
    b = task.sample([3], torch.Generator().manual_seed(0), seq2seq=False)
    x = b.inputs[0, :3]
    assert b.inputs[0].tolist() == [*x.tolist(), task.sep, *x.flip(0).tolist()]
    assert b.targets[0].tolist() == [IGNORE] * 3 + [*x.flip(0).tolist(), task.eos]


def test_seq2seq_layout_and_padding():
    task = SequenceTask("copy", 5)
    b = task.sample([2, 4], torch.Generator().manual_seed(0), seq2seq=True)
    assert b.src.shape == (2, 4) and b.src[0, 2:].tolist() == [task.pad] * 2
    assert b.inputs[1].tolist() == [task.bos, *b.src[1].tolist()]
    assert b.targets[0].tolist() == [*b.src[0, :2].tolist(), task.eos, IGNORE, IGNORE]


def test_repeat_task_and_fixed_test_sets():
    task = SequenceTask("repeat", 9)
    b = task.eval_batch(6, 5, seq2seq=True)
    assert all(len(set(row.tolist())) == 1 for row in b.src)
    assert torch.equal(b.src, task.eval_batch(6, 5, seq2seq=True).src)
    a = task.train_batch(1, 4, 8, 0, 3, seq2seq=False)
    assert torch.equal(a.inputs, task.train_batch(1, 4, 8, 0, 3, seq2seq=False).inputs)
    assert not torch.equal(a.inputs, task.train_batch(1, 4, 8, 0, 4, seq2seq=False).inputs)


@torch.no_grad()
def _greedy_exact(model, task, batch):
    """Exact match by real greedy decoding, one token at a time, for the decoder-only layout."""
    right = 0
    for b in range(batch.size):
        n = int(batch.lengths[b])
        seq = batch.inputs[b, : n + 1].tolist()  # x and SEP
        want = batch.targets[b, n : 2 * n + 1].tolist()
        for _ in range(n + 1):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        right += seq[n + 1 :] == want
    return right / batch.size


class FlawedCopier(torch.nn.Module):
    """A hand-built decoder-only copier that errs after emitting symbol 0 (so that an early mistake changes what
    greedy decoding sees next): exact match is neither 0 nor 1, and the two ways to read it must agree."""

    def __init__(self, task: SequenceTask) -> None:
        super().__init__()
        self.task = task

    def forward(self, ids):
        b, t = ids.shape
        logits = torch.zeros(b, t, self.task.vocab_size)
        for i in range(b):
            sep = (ids[i] == self.task.sep).nonzero()
            if not len(sep):
                continue
            n = int(sep[0])
            for p in range(n, t):
                k = p - n  # output index being predicted
                want = int(ids[i, k]) if k < n else self.task.eos
                if p > n and int(ids[i, p]) == 0:  # just emitted a 0: answer 1 instead
                    want = 1
                logits[i, p, want] = 1.0
        return logits


def test_teacher_forced_exact_match_equals_greedy_decoding():
    task = SequenceTask("copy", 3)
    cfg = RunConfig(task="copy", symbols=3, eval_examples=40)
    model = FlawedCopier(task)
    seen = set()
    for n in (1, 2, 3, 5):
        got = evaluate(model, cfg, n)
        assert got == pytest.approx(_greedy_exact(model, task, task.eval_batch(n, 40, seq2seq=False)))
        seen.add(got)
    assert any(0.0 < v < 1.0 for v in seen)


@pytest.mark.parametrize("encoding", ["learned", "randomized:inner=rope,max_len=64"])
def test_resume_after_interruption_is_bit_identical(tmp_path, encoding):
    """Also with randomized positions, whose sampler's generator is saved with the checkpoint."""
    cfg = RunConfig(encoding=encoding, steps=6, checkpoint_every=2, dropout=0.1, **TINY)
    full = train_run(cfg, tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_at_5(step):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train_run(cfg, tmp_path / "cut", on_step=stop_at_5)  # killed after the step-4 checkpoint
    assert not is_finished(tmp_path / "cut", cfg)
    resumed = train_run(cfg, tmp_path / "cut")
    assert is_finished(tmp_path / "cut", cfg)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    loaded, loaded_cfg = load_run(tmp_path / "cut")
    assert loaded_cfg == cfg
    assert evaluate(loaded, cfg, 3) == evaluate(resumed, cfg, 3)


def test_a_kill_between_the_files_and_run_json_resumes_from_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """run.json is the commit point: killed after step 4's tensors were written but before its run.json, the run
    resumes from step 2's files (they were overwritten in place before, and the resumed weights differed)."""
    import posenc.lab.runs as runs

    cfg = RunConfig(encoding="learned", steps=6, checkpoint_every=2, dropout=0.1, **TINY)
    full = train_run(cfg, tmp_path / "full")
    real, calls = runs._atomic, [0]

    def die_before_the_second_run_json(write, path):
        if path.name == "run.json":
            calls[0] += 1
            if calls[0] == 2:
                raise KeyboardInterrupt
        real(write, path)

    monkeypatch.setattr(runs, "_atomic", die_before_the_second_run_json)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut")
    monkeypatch.setattr(runs, "_atomic", real)
    resumed = train_run(cfg, tmp_path / "cut")
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in (tmp_path / "cut").glob("*.safetensors")) == [
        "model-00000006.safetensors", "optim-00000006.safetensors"]


def test_a_corrupt_checkpoint_file_is_named(tmp_path):
    cfg = RunConfig(steps=2, **TINY)
    train_run(cfg, tmp_path)
    path = tmp_path / "model-00000002.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model-00000002.safetensors is missing or does not match the sha256"):
        load_run(tmp_path)


def test_run_of_another_config_is_refused(tmp_path):
    cfg = RunConfig(steps=2, **TINY)
    train_run(cfg, tmp_path)
    with pytest.raises(ValueError, match="encoding: 'none' -> 'sinusoidal'"):
        train_run(RunConfig(steps=2, encoding="sinusoidal", **TINY), tmp_path)


def test_seq2seq_run_trains_and_evaluates(tmp_path):
    cfg = RunConfig(arch="seq2seq", encoding="sinusoidal", steps=3, **TINY)
    model = train_run(cfg, tmp_path)
    assert 0.0 <= evaluate(model, cfg, 5) <= 1.0


def test_char_lm_perplexity_is_exp_of_mean_nll(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcd" * 600)
    data = CharText(text)
    assert data.vocab_size == 4 and len(data.valid) == 240
    w = data.eval_windows(10, 100)
    assert w.inputs.shape == (10, 10)
    assert torch.equal(w.inputs[1, 0:1], data.valid[10:11]) and torch.equal(w.targets[0], data.valid[1:11])
    cfg = RunConfig(**{**TINY, "task": "lm", "text": str(text), "train_min": 8, "train_max": 8, "steps": 2, "eval_tokens": 100})
    model = train_run(cfg, tmp_path / "run")
    with torch.no_grad():
        logp = torch.log_softmax(model(w.inputs), -1).gather(-1, w.targets[..., None])
    assert evaluate(model, cfg, 10) == pytest.approx(float(torch.exp(-logp.mean())), rel=1e-5)


def test_bad_configs():
    with pytest.raises(ValueError, match="task must be one of"):
        RunConfig(task="sorting")
    with pytest.raises(ValueError, match="needs a text file"):
        RunConfig(task="lm")
    with pytest.raises(ValueError, match="train_min <= train_max"):
        RunConfig(train_min=5, train_max=4)
    with pytest.raises(ValueError, match="num_heads must be >= 1, got 0"):  # was a ZeroDivisionError traceback
        RunConfig(num_heads=0)
    with pytest.raises(ValueError, match="dim_feedforward must be >= 1, got 0"):
        RunConfig(dim_feedforward=0)
    with pytest.raises(ValueError, match="warmup must be >= 0, got -5"):
        RunConfig(warmup=-5)
    with pytest.raises(FileNotFoundError):
        CharText("/nonexistent/file.txt")


def test_each_kind_of_run_directory_names_the_other(tmp_path):
    """A lab run (run.json) and a trainer run (config.json) are not interchangeable; each loader says which it is."""
    from posenc.train.run import load_run as load_train_run

    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "run.json").write_text("{}")
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="a run of `posenc compare` .*takes a run directory of `posenc train`"):
        load_train_run(tmp_path / "lab")
    with pytest.raises(FileNotFoundError, match="is a run of `posenc train` .*takes a run of `posenc compare`"):
        load_run(tmp_path / "trained")
    with pytest.raises(FileNotFoundError, match="holds no run.json"):
        load_run(tmp_path)


def _stopped_run(tmp_path, steps=6, stop_at=3, **kw):
    """A run killed after its step-2 checkpoint, as an interrupted `posenc compare` leaves it."""
    cfg = RunConfig(steps=steps, checkpoint_every=2, **{**TINY, **kw})

    class Stop(Exception):
        pass

    def stop(step):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        train_run(cfg, tmp_path, on_step=stop)
    return cfg


def test_an_unfinished_run_is_refused_unless_asked_for(tmp_path):
    """A run stopped at step 2 of 6 was loaded as if trained, and measured or pictured without a word."""
    cfg = _stopped_run(tmp_path / "run")
    with pytest.raises(ValueError, match=r"run is an unfinished run: it stopped at step 2 of 6 \(config.steps\); "
                                         r"run `posenc compare` again with the same settings to finish it"):
        load_run(tmp_path / "run")
    model, loaded = load_run(tmp_path / "run", allow_unfinished=True)  # inspecting a run in progress stays possible
    assert loaded == cfg and not model.training
    tune = RunConfig(steps=2, **{**TINY, "init_from": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="stopped at step 2 of 6"):  # a fine-tune from it would start half-trained
        train_run(tune, tmp_path / "tune")
    assert not (tmp_path / "tune").exists()
    train_run(cfg, tmp_path / "run")  # finishing it lifts the refusal
    assert load_run(tmp_path / "run")[1] == cfg


def test_a_model_or_optimizer_setting_is_refused_by_the_config():
    """Refused only once the model or optimizer was built, these came after a comparison wrote its setup."""
    with pytest.raises(ValueError, match="d_model=10 is not divisible by num_heads=4"):
        RunConfig(d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1"):
        RunConfig(lr=-1)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0, got nan"):
        RunConfig(weight_decay=float("nan"))
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\], got 1.5"):
        RunConfig(dropout=1.5)


def test_an_lm_context_longer_than_the_text_is_named(tmp_path):
    """It failed inside torch.randint with a traceback; a test length longer than the validation text failed only
    after the run had trained."""
    from posenc.lab.runs import check_lengths

    text = tmp_path / "t.txt"
    text.write_text("abcd" * 500)  # 1800 training and 200 validation characters
    lm = {**TINY, "task": "lm", "text": str(text), "steps": 1}
    too_long = RunConfig(**{**lm, "train_min": 1799, "train_max": 1799})
    message = r"training context 1799 is too long for .*t.txt: its training text .* has 1800 characters.*at most 1798"
    with pytest.raises(ValueError, match=message):
        check_lengths(too_long, [8])
    with pytest.raises(ValueError, match=message):
        train_run(too_long, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    fits = RunConfig(**{**lm, "train_min": 1798, "train_max": 1798})
    check_lengths(fits, [199])
    with pytest.raises(ValueError, match=r"test length 200 exceeds the 199 validation characters of .*t.txt"):
        check_lengths(fits, [8, 200])
