from __future__ import annotations

import json
import pathlib

import pytest

from posenc.cli import main

TINY = ["--model.d_model", "32", "--model.num_layers", "1", "--model.dim_feedforward", "64", "--data.batch_size", "8",
        "--data.train_lengths", "1,3", "--data.test_lengths", "4,5", "--eval.examples", "16", "--steps", "5",
        "--train.threads", "1", "--precision", "fp32"]


def test_train_then_eval_at_other_lengths(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--task", "reverse", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "in_lengths" in out and "out_lengths" in out and "exact match by length (out_lengths): 4:" in out
    assert (run / "config.json").is_file() and (run / "tokenizer.json").is_file()
    assert json.loads((run / "config.json").read_text())["data"]["task"] == "reverse"
    report = tmp_path / "eval.json"
    assert main(["eval", str(run), "--lengths", "2,9-10", "--examples", "8", "--output", str(report)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint step 5" in out and "len9" in out
    doc = json.loads(report.read_text())
    assert set(doc["evals"]) == {"len2", "len9", "len10"}
    assert list(doc["evals"]["len9"]["exact_match_per_length"]) == ["9"]


def test_errors_exit_2(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", *TINY, "--encoding", "nonsense", "--run-dir", str(tmp_path / "r")]) == 2
    assert "unknown positional encoding 'nonsense'" in capsys.readouterr().err


def test_eval_options_a_run_cannot_use_are_refused(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    run = tmp_path / "text"
    assert main(["train", *TINY, "--data.kind", "text", "--data.path", str(text), "--data.block_size", "16",
                 "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--examples", "3"]) == 2  # was accepted and ignored
    assert "--examples applies to built-in tasks; this run trained on data.kind 'text'" in capsys.readouterr().err
    task = tmp_path / "task"
    assert main(["train", *TINY, "--run-dir", str(task)]) == 0
    capsys.readouterr()
    assert main(["eval", str(task), "--lengths", ",,"]) == 2  # fell back to the run's own sets
    assert "--lengths names no length: ',,'" in capsys.readouterr().err
    assert main(["eval", str(task), "--lengths", "5,abc"]) == 2
    assert "--lengths '5,abc': a length must be an integer or a range like 21-40, got 'abc'" in capsys.readouterr().err


def test_eval_of_another_runs_checkpoint_says_the_data_differ(tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    copy, rev = tmp_path / "copy", tmp_path / "reverse"
    assert main(["train", *TINY, "--task", "copy", "--run-dir", str(copy)]) == 0
    assert main(["train", *TINY, "--task", "reverse", "--run-dir", str(rev)]) == 0
    capsys.readouterr()
    assert main(["eval", str(copy), "--checkpoint", str(rev / "checkpoints" / "step_00000005")]) == 0
    err = capsys.readouterr().err
    assert "was trained on other data than" in err and "data.task: checkpoint 'reverse', this run 'copy'" in err
    assert main(["eval", str(copy), "--checkpoint", str(copy / "checkpoints" / "step_00000005")]) == 0
    assert "note" not in capsys.readouterr().err
