from __future__ import annotations

import pathlib

import pytest

from posenc.cli import main
from posenc.data.tasks import SEP, example
from posenc.generate import generate, translate
from posenc.train import load_run

TINY = ["--model.d_model", "32", "--model.num_layers", "1", "--model.dim_feedforward", "64", "--data.batch_size", "8",
        "--data.train_lengths", "1,3", "--data.test_lengths", "4,5", "--eval.examples", "8", "--steps", "3",
        "--train.threads", "1", "--precision", "fp32", "--task", "reverse"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    run = tmp_path_factory.mktemp("lm") / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def s2s_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    run = tmp_path_factory.mktemp("s2s") / "run"
    assert main(["train", *TINY, "--model.kind", "seq2seq", "--run-dir", str(run)]) == 0
    return run


def test_generate_prints_what_the_library_generates(lm_run, capsys):
    prompts = [example("reverse", seed=0, split="valid", index=i, lengths=(1, 3))[0] for i in range(3)]
    capsys.readouterr()
    args = ["generate", str(lm_run), "--max-new-tokens", "6", "--continuation-only"]
    for p in prompts:
        args += ["--prompt", p]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    model, tok, _ = load_run(lm_run)
    ids = [[tok.bos_id, *tok.encode(p), tok.special_id(SEP)] for p in prompts]
    want = [tok.decode(o) for o in generate(model, ids, max_new_tokens=6, eos_id=tok.eos_id)]
    assert lines == want


def test_translate_one_line_per_line_in_order(s2s_run, tmp_path, capsys):
    sources = [example("reverse", seed=0, split="valid", index=i, lengths=(1, 3))[0] for i in range(5)]
    src_file = tmp_path / "src.txt"
    src_file.write_text("\n".join(sources) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["translate", str(s2s_run), str(src_file), "--batch-size", "2", "--strategy", "beam",
                 "--beam-size", "3", "--max-new-tokens", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    model, tok, _ = load_run(s2s_run)
    outs = translate(model, [[*tok.encode(s), tok.eos_id] for s in sources], bos_id=tok.bos_id, eos_id=tok.eos_id,
                     max_len=6, strategy="beam", beam_size=3)
    assert lines == [tok.decode(o) for o in outs]


def test_wrong_model_kind_is_refused(lm_run, s2s_run, capsys):
    assert main(["translate", str(lm_run), "-"]) == 2
    assert "needs a model.kind 'seq2seq' run" in capsys.readouterr().err
    assert main(["generate", str(s2s_run), "--prompt", "ab"]) == 2
    assert "use `posenc translate`" in capsys.readouterr().err


def test_unknown_prompt_characters_are_warned_about(lm_run, capsys):
    """The task's alphabet is a-d here: 'xyz' is read as <unk>, which the README promises is never silent."""
    assert main(["generate", str(lm_run), "--prompt", "ab", "--prompt", "xyz", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert "3 character(s) of the prompts are not in the run's vocabulary and were read as <unk>: 'xyz'" in err


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "5"], "--top-k 5 applies to --strategy sample, not greedy"),
    (["--temperature", "0.1", "--strategy", "beam"], "--temperature 0.1 applies to --strategy sample, not beam"),
    (["--beam-size", "7", "--strategy", "sample"], "--beam-size 7 applies to --strategy beam, not sample"),
    (["--input", "prompts.txt"], "give prompts with --prompt or with --input, not both"),
])
def test_an_option_that_would_do_nothing_is_refused(lm_run, capsys, extra, message):
    assert main(["generate", str(lm_run), "--prompt", "ab", *extra]) == 2
    assert message in capsys.readouterr().err


def test_translate_refuses_beam_options_with_greedy(s2s_run, capsys):
    assert main(["translate", str(s2s_run), "-", "--length-penalty", "5"]) == 2
    assert "--length-penalty 5.0 applies to --strategy beam, not greedy" in capsys.readouterr().err


def test_a_bad_device_is_named(lm_run, capsys):
    assert main(["generate", str(lm_run), "--prompt", "ab", "--device", "foo"]) == 2
    assert "device must be auto, cpu, cuda or cuda:N, got 'foo'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "translate"])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_a_seed_that_would_do_nothing_is_refused(lm_run, s2s_run, capsys, command, strategy):
    """--seed was silently ignored by greedy and beam search."""
    run = [str(lm_run), "--prompt", "ab"] if command == "generate" else [str(s2s_run), "-"]
    assert main([command, *run, "--strategy", strategy, "--seed", "3"]) == 2
    assert f"--seed 3 applies to --strategy sample, not {strategy}" in capsys.readouterr().err


def _sampled(capsys, args: list[str]) -> list[str]:
    capsys.readouterr()
    assert main(args) == 0
    return capsys.readouterr().out.splitlines()


def test_samples_do_not_depend_on_the_batch_size(lm_run, s2s_run, tmp_path, capsys):
    """Each batch was re-seeded: with --batch-size 1, three identical prompts got three identical samples, and the
    samples changed with the batch size."""
    sample = ["--strategy", "sample", "--temperature", "3", "--max-new-tokens", "8", "--seed", "5"]
    lm = ["generate", str(lm_run), *sample, "--continuation-only"] + ["--prompt", "abc"] * 3
    one, three = (_sampled(capsys, [*lm, "--batch-size", n]) for n in ("1", "3"))
    assert one == three and len(set(one)) > 1
    assert _sampled(capsys, lm) == one  # the default batch size too
    assert _sampled(capsys, [*lm[:-6], "--prompt", "abc"]) == one[:1]  # a line's draws do not depend on later lines
    assert _sampled(capsys, [*lm, "--seed", "6"]) != one
    src = tmp_path / "src.txt"
    src.write_text("abc\n" * 3, encoding="utf-8")
    s2s = ["translate", str(s2s_run), str(src), *sample]
    one, three = (_sampled(capsys, [*s2s, "--batch-size", n]) for n in ("1", "3"))
    assert one == three and len(set(one)) > 1


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("text")
    (root / "t.txt").write_text("the cat sat on the mat. " * 100, encoding="utf-8")
    args = ["train", "--data.kind", "text", "--data.path", str(root / "t.txt"), "--data.block_size", "16",
            "--model.d_model", "32", "--model.num_layers", "1", "--model.dim_feedforward", "64",
            "--data.batch_size", "4", "--steps", "1", "--train.threads", "1", "--precision", "fp32",
            "--run-dir", str(root / "run")]
    assert main(args) == 0
    return root / "run"


def test_an_empty_prompt_of_a_text_run_names_its_line(text_run, tmp_path, capsys, monkeypatch):
    """One empty line aborted the batch without saying which."""
    import io

    prompts = tmp_path / "p.txt"
    prompts.write_text("the\nca\n\nmat\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["generate", str(text_run), "--input", str(prompts), "--max-new-tokens", "2"]) == 2
    assert f"line 3 of {prompts} is an empty prompt: a text model needs at least one character" in \
        capsys.readouterr().err
    assert main(["generate", str(text_run), "--prompt", "the", "--prompt", "", "--max-new-tokens", "2"]) == 2
    assert "--prompt number 2 is an empty prompt" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"the\n\n"), encoding="utf-8"))
    assert main(["generate", str(text_run), "--batch-size", "1", "--max-new-tokens", "2"]) == 2
    assert "line 2 of standard input is an empty prompt" in capsys.readouterr().err


def test_an_input_file_that_is_not_utf8_is_named_with_its_line(lm_run, s2s_run, tmp_path, capsys, monkeypatch):
    """The decoder's own message named neither the file nor the line."""
    import io

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ab\ncd\xff\n")
    for args in (["generate", str(lm_run), "--input", str(bad)], ["translate", str(s2s_run), str(bad)]):
        capsys.readouterr()
        assert main([*args, "--max-new-tokens", "2"]) == 2
        assert f"line 2 of {bad} is not UTF-8 text (byte 0xff at byte 3 of the line)" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xfe\n"), encoding="utf-8"))
    assert main(["translate", str(s2s_run), "--max-new-tokens", "2"]) == 2
    assert "line 1 of standard input is not UTF-8 text" in capsys.readouterr().err
