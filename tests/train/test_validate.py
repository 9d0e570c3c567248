"""A run's config is checked before anything is written, whether it comes from a file, the command line or Python."""

from __future__ import annotations

import pathlib

import pytest

from posenc.cli import main
from posenc.train import RunConfig, train
from posenc.train.validate import check_run_config


def _cfg(tmp_path: pathlib.Path) -> RunConfig:
    cfg = RunConfig()
    cfg.train.run_dir = str(tmp_path / "run")
    return cfg


@pytest.mark.parametrize("error, section, name, value, message", [
    (TypeError, "train", "steps", 2.5, "train.steps must be an int, got 2.5"),
    (TypeError, "train", "steps", True, "train.steps must be an int, got True"),
    (TypeError, "train", "steps", "3", "train.steps must be an int, got '3'"),
    (TypeError, "model", "encoding", ["rope", "none"], r"model.encoding must be a string, got \['rope', 'none'\]"),
    (TypeError, "data", "train_lengths", [1, 2.5], r"data.train_lengths must be a list of int, got \[1, 2.5\]"),
    (TypeError, "optim", "lr", "fast", "optim.lr must be a number, got 'fast'"),
    (ValueError, "optim", "min_lr_ratio", -3.0, r"optim.min_lr_ratio must lie in \[0, 1\], got -3.0"),
    (ValueError, "optim", "label_smoothing", 5.0, r"optim.label_smoothing must lie in \[0, 1\), got 5.0"),
    (ValueError, "optim", "grad_clip", -1.0, "optim.grad_clip .* must be a finite number >= 0, got -1.0"),
    (ValueError, "optim", "lr", float("nan"), "optim.lr must be a finite number > 0, got nan"),
    (ValueError, "optim", "eps", 0.0, "optim.eps must be a finite number > 0, got 0.0"),
    (ValueError, "train", "dist_timeout", float("inf"),
     r"train.dist_timeout \(seconds\) must be a finite number > 0, got inf"),
    (ValueError, "optim", "schedule", "foo", "optim.schedule must be one of 'noam', 'cosine', 'constant'; got 'foo'"),
    (ValueError, "optim", "warmup_steps", -1, "optim.warmup_steps must be a finite number >= 0, got -1"),
    (ValueError, "optim", "beta2", 1.0, r"optim.beta2 must lie in \[0, 1\), got 1.0"),
    (ValueError, "train", "threads", -2, "train.threads .* must be a finite number >= 0, got -2"),
    (ValueError, "train", "seed", -1, "train.seed must be a finite number >= 0, got -1"),
    (ValueError, "data", "batch_size", 0, "data.batch_size must be >= 1, got 0"),
    (ValueError, "train", "keep_checkpoints", -1, "train.keep_checkpoints .* >= 0, got -1"),
    (ValueError, "train", "time_limit", -1.0, "train.time_limit .* >= 0, got -1.0"),
    (ValueError, "train", "parallel", "zero", "train.parallel must be one of 'ddp', 'fsdp'; got 'zero'"),
    (ValueError, "eval", "every", -5, "eval.every .* >= 0, got -5"),
    (ValueError, "eval", "max_blocks", -1, "eval.max_blocks .* >= 0, got -1"),
    (ValueError, "model", "dim_feedforward", 0, "model.dim_feedforward must be >= 1, got 0"),
    (ValueError, "model", "dropout", 1.5, r"model.dropout must lie in \[0, 1\], got 1.5"),
    (ValueError, "model", "decoder_encoding", "rope", "model.decoder_encoding .* is for seq2seq models"),
])
def test_a_bad_setting_is_named_before_the_run_directory_is_written(tmp_path, error, section, name, value, message):
    """Types first (``steps = 2.5`` ran 3 steps and never checkpointed), then ranges (``min_lr_ratio = -3`` gave a
    negative learning rate)."""
    cfg = _cfg(tmp_path)
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(error, match=message):
        train(cfg, log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_eval_lengths_apply_to_tasks_only(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.data.kind, cfg.eval.lengths = "text", [5, 9]
    with pytest.raises(ValueError, match=r"eval.lengths \(\[5, 9\]\) applies to built-in tasks; .* 'text'"):
        check_run_config(cfg)


def test_the_defaults_pass():
    check_run_config(RunConfig())


def test_the_command_line_refuses_the_same_and_abbreviated_settings(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--run-dir", run, "--optim.min_lr_ratio", "-3"]) == 2
    assert "optim.min_lr_ratio must lie in [0, 1], got -3.0" in capsys.readouterr().err
    assert main(["train", "--run-dir", run, "--train.device", "foo"]) == 2
    assert "device must be auto, cpu, cuda or cuda:N, got 'foo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a file refuses [train] step = 7; so does the command line now
        main(["train", "--run-dir", run, "--train.step", "7"])
    assert "unrecognized arguments: --train.step" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings, message", [
    ({"kind": "text", "tokenizer": "bpe", "bpe_vocab_size": 100},
     r"data.bpe_vocab_size must be >= 259 \(256 bytes \+ the special tokens\), got 100"),
    ({"kind": "translation", "bpe_vocab_size": 5}, "data.bpe_vocab_size must be >= 259"),
    ({"kind": "text", "block_size": 0}, "data.block_size must be >= 1, got 0"),
    ({"kind": "text", "val_fraction": 1.0}, r"data.val_fraction must lie in \(0, 1\), got 1.0"),
    ({"kind": "text", "tokenizer": "words"}, "data.tokenizer must be one of 'char', 'bpe'; got 'words'"),
    ({"kind": "translation", "max_tokens": 0}, "data.max_tokens must be >= 1, got 0"),
])
def test_data_settings_are_named(tmp_path: pathlib.Path, settings: dict, message: str) -> None:
    """Checked as settings up front: the dataset builders would name their own parameters (``vocab_size``)."""
    cfg = _cfg(tmp_path)
    for name, value in settings.items():
        setattr(cfg.data, name, value)
    with pytest.raises(ValueError, match=message):
        check_run_config(cfg)
