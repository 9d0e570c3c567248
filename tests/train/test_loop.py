from __future__ import annotations

import json
import pathlib

import pytest
import torch

from posenc.data.batch import Batch
from posenc.data.tasks import TaskDataset
from posenc.train import RunConfig, load_run, train
from posenc.train.checkpoint import CheckpointError
from posenc.train.loop import _Setup, _update
from posenc.train.metrics import forward
from posenc.train.optim import build_optimizer
from posenc.train.run import build_model


def tiny(tmp_path: pathlib.Path, **train_kw: object) -> RunConfig:
    cfg = RunConfig()
    cfg.model.d_model, cfg.model.num_layers, cfg.model.dim_feedforward = 32, 2, 64
    cfg.data.task, cfg.data.batch_size, cfg.data.train_lengths, cfg.data.test_lengths = "copy", 16, [1, 4], [5, 6]
    cfg.data.alphabet_size = 4
    cfg.train.steps, cfg.train.log_every, cfg.train.threads, cfg.train.run_dir = 60, 20, 1, str(tmp_path / "run")
    cfg.train.precision = "fp32"
    cfg.eval.examples, cfg.eval.every = 32, 0
    for k, v in train_kw.items():
        setattr(cfg.train, k, v)
    return cfg


def _silent(_: str) -> None:
    pass


def test_training_learns_and_load_run_gives_the_same_model(tmp_path: pathlib.Path) -> None:
    cfg = tiny(tmp_path, steps=120)
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-2, 10
    result = train(cfg, log=_silent)
    assert result.step == 120
    rows = [json.loads(ln) for ln in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert result.evals["in_lengths"].token_acc > 0.5  # chance is 1/4 over the alphabet
    model, tok, loaded_cfg = load_run(result.run_dir)
    assert loaded_cfg == cfg and tok.fingerprint() == TaskDataset(task="copy", options=_opts(4)).tokenizer.fingerprint()
    assert not model.training
    ds = TaskDataset(task="copy", train_lengths=(1, 4), options=_opts(4))
    batch = next(ds.train_batches())
    again = train(cfg, log=_silent)  # complete already: no training, only evaluation of the checkpoint
    assert again.step == 120 and again.evals["in_lengths"].loss == pytest.approx(result.evals["in_lengths"].loss)
    assert torch.isfinite(forward(model, batch, "lm")).all()


def _opts(alphabet: int):  # noqa: ANN202
    from posenc.data.tasks import TaskOptions

    return TaskOptions(alphabet_size=alphabet)


def test_gradient_accumulation_equals_one_big_batch() -> None:
    ds = TaskDataset(task="reverse", train_lengths=(2, 6), batch_size=6)
    cfg = RunConfig()
    cfg.model.d_model, cfg.model.num_layers, cfg.model.dim_feedforward, cfg.train.precision = 16, 1, 32, "fp32"
    cfg.optim.label_smoothing = 0.1
    b = next(ds.train_batches())
    halves = [Batch(inputs=b.inputs[:3], targets=b.targets[:3]), Batch(inputs=b.inputs[3:], targets=b.targets[3:])]
    grads = []
    for batches in ([b], halves):
        torch.manual_seed(0)
        model = build_model(cfg.model, ds.tokenizer)
        s = _Setup(cfg=cfg, run_dir=pathlib.Path("."), device=torch.device("cpu"), dataset=ds, model=model,
                   optimizer=build_optimizer(model, cfg.optim))
        loss, _, tokens = _update(s, model, batches, lr=1e-3)
        grads.append(([p.grad.clone() for p in model.parameters()], loss, tokens))
    (g1, l1, n1), (g2, l2, n2) = grads
    assert n1 == n2 and l1 == pytest.approx(l2, rel=1e-5)
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


def test_seq2seq_and_bf16_and_text(tmp_path: pathlib.Path) -> None:
    cfg = tiny(tmp_path, steps=40, precision="bf16")
    cfg.model.kind, cfg.model.num_encoder_layers, cfg.model.num_decoder_layers = "seq2seq", 1, 1
    cfg.optim.lr = 1e-2
    res = train(cfg, log=_silent)
    assert res.evals["in_lengths"].loss < 1.6  # chance over the 4 symbols + EOS is ln(5) = 1.61 or worse
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh" * 300)
    cfg = tiny(tmp_path, steps=30, run_dir=str(tmp_path / "lm"))
    cfg.data.kind, cfg.data.path, cfg.data.block_size, cfg.optim.lr = "text", str(text), 16, 1e-2
    res = train(cfg, log=_silent)
    assert res.evals["valid"].loss < 0.5  # a periodic text is easy
    assert res.evals["valid"].ppl == pytest.approx(torch.tensor(res.evals["valid"].loss).exp().item(), rel=1e-6)


def test_resume_refuses_another_width(tmp_path: pathlib.Path) -> None:
    cfg = tiny(tmp_path, steps=2)
    train(cfg, log=_silent)
    cfg.model.d_model = 48
    cfg.train.steps = 4
    with pytest.raises(CheckpointError, match=r"model\.d_model: checkpoint 32, this run 48"):
        train(cfg, log=_silent)
    cfg.train.resume = "never"
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(cfg, log=_silent)


def test_bad_settings(tmp_path: pathlib.Path) -> None:
    cfg = tiny(tmp_path)
    cfg.train.precision = "fp16"
    with pytest.raises(ValueError, match="'fp16'"):
        train(cfg, log=_silent)
    cfg = tiny(tmp_path)
    cfg.data.kind = "images"
    with pytest.raises(ValueError, match="data.kind must be one of"):
        train(cfg, log=_silent)


def test_attention_path_choice() -> None:
    from posenc.attention import MultiHeadAttention
    from posenc.train.loop import _choose_attention

    ds = TaskDataset(task="copy")
    for precision, mode, want in (("bf16", "auto", True), ("fp32", "auto", False), ("fp32", "math", True),
                                  ("bf16", "fused", False)):
        cfg = RunConfig()
        cfg.train.precision, cfg.train.attention = precision, mode
        model = build_model(cfg.model, ds.tokenizer)
        _choose_attention(model, cfg, torch.device("cpu"))
        flags = {m.use_math for m in model.modules() if isinstance(m, MultiHeadAttention)}
        assert flags == {want}, (precision, mode)


def test_a_failed_evaluation_keeps_the_trained_weights(tmp_path: pathlib.Path) -> None:
    """A learned table too short for the test lengths: the final evaluation fails, the checkpoint is there."""
    cfg = tiny(tmp_path, steps=3, checkpoint_every=100)
    cfg.model.encoding = "learned:max_len=12"  # training reaches 2 * 4 + 2 tokens; the tests (5, 6) need 14
    with pytest.raises(ValueError, match="past the learned table"):
        train(cfg, log=_silent)
    model, _, _ = load_run(cfg.train.run_dir)  # the step-3 weights
    run = pathlib.Path(cfg.train.run_dir)
    assert json.loads((run / "checkpoints" / "step_00000003" / "state.json").read_text())["step"] == 3
    evals = [ln.split(",")[:2] for ln in (run / "metrics.csv").read_text().splitlines() if ",train," not in ln]
    assert evals[1:] == [["3", "in_lengths"]]  # the set scored before the failing one is logged


def test_a_fresh_start_drops_the_metric_rows_an_earlier_run_left(tmp_path: pathlib.Path) -> None:
    import shutil

    cfg = tiny(tmp_path, steps=4, log_every=1)
    train(cfg, log=_silent)
    run = pathlib.Path(cfg.train.run_dir)
    def rows(name: str) -> list[list[str]]:  # step and split of each row (the timings differ)
        return [ln.split(",")[:2] for ln in (run / name).read_text().splitlines()]

    first = rows("metrics.csv"), rows("eval_lengths.csv"), len((run / "metrics.jsonl").read_text().splitlines())
    assert len(first[0]) == 1 + 4 + 2  # header, 4 training rows, 2 evaluation sets at the end
    shutil.rmtree(run / "checkpoints")  # nothing to resume from: the next run starts at step 0
    train(cfg, log=_silent)
    again = rows("metrics.csv"), rows("eval_lengths.csv"), len((run / "metrics.jsonl").read_text().splitlines())
    assert again == first


def test_a_run_directory_that_is_a_file_is_named(tmp_path: pathlib.Path) -> None:
    cfg = tiny(tmp_path, steps=2)
    pathlib.Path(cfg.train.run_dir).write_text("x")
    with pytest.raises(ValueError, match=r"run is a file; the run directory and its checkpoints/ must be"):
        train(cfg, log=_silent)
    cfg.train.run_dir = str(tmp_path / "other")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoints").write_text("x")
    with pytest.raises(ValueError, match=r"checkpoints is a file"):
        train(cfg, log=_silent)


def test_resuming_past_the_last_step_says_so(tmp_path: pathlib.Path) -> None:
    train(tiny(tmp_path, steps=4, checkpoint_every=2), log=_silent)
    lines: list[str] = []
    result = train(tiny(tmp_path, steps=3), log=lines.append)
    assert result.step == 4
    assert any("train.steps is 3 and the checkpoint is at step 4: nothing to train" in ln for ln in lines)
