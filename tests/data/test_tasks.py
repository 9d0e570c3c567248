from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from posenc.data.tasks import TASKS, TaskDataset, TaskOptions, example

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _ex(task: str, i: int, lengths: tuple[int, int] = (1, 12), **opts: object) -> tuple[str, str, int]:
    return example(task, seed=3, split="train", index=i, lengths=lengths, options=TaskOptions(**opts))  # type: ignore[arg-type]


@pytest.mark.parametrize("i", range(20))
def test_answers_are_right(i: int) -> None:
    x, y, n = _ex("copy", i)
    assert y == x and len(x) == n and 1 <= n <= 12
    x, y, n = _ex("reverse", i)
    assert y == x[::-1] and len(x) == n
    x, y, n = _ex("sort", i)
    assert y == "".join(sorted(x)) and len(x) == n
    x, y, n = _ex("repeat", i)
    assert int(x[1:]) == n and y == x[0] * n
    x, y, n = _ex("parity", i)
    assert len(x) == n and y == str(x.count("1") % 2)
    x, y, n = _ex("addition", i)
    a, b = x.split("+")
    assert len(a) == len(b) == n
    assert int(y[::-1]) == int(a[::-1]) + int(b[::-1])
    x, y, n = _ex("addition", i, reversed_digits=False)
    a, b = x.split("+")
    assert int(y) == int(a) + int(b) and len(a) == n and (n == 1 or a[0] != "0")
    x, y, n = _ex("associative_recall", i)
    pairs, query = x[:-1], x[-1]
    table = {pairs[j]: pairs[j + 1] for j in range(0, len(pairs), 2)}
    assert len(table) == n and table[query] == y


@pytest.mark.parametrize("lengths", [(18, 18), (19, 19), (20, 40)])
def test_addition_beyond_int64(lengths: tuple[int, int]) -> None:
    """The default test lengths reach 20 digits; 19 and more used to overflow int64 ("high is out of bounds")."""
    for i in range(20):
        for flip in (True, False):
            x, y, n = _ex("addition", i, lengths, reversed_digits=flip)
            a, b = (t[::-1] if flip else t for t in x.split("+"))
            assert len(a) == len(b) == n and a[0] != "0" and b[0] != "0"
            assert (y[::-1] if flip else y) == str(int(a) + int(b))


def test_alphabet_size_limits_symbols() -> None:
    xs = "".join(_ex("copy", i, alphabet_size=3)[0] for i in range(50))
    assert set(xs) == set("abc")


def test_lengths_cover_the_range_uniformly() -> None:
    ns = [example("copy", seed=0, split="train", index=i, lengths=(4, 7))[2] for i in range(400)]
    assert set(ns) == {4, 5, 6, 7}
    assert all(70 < ns.count(n) < 130 for n in (4, 5, 6, 7))


def test_seeded_and_split_distinct() -> None:
    assert _ex("copy", 5) == _ex("copy", 5)
    a = [example("copy", seed=0, split="train", index=i, lengths=(8, 8))[0] for i in range(10)]
    b = [example("copy", seed=0, split="valid", index=i, lengths=(8, 8))[0] for i in range(10)]
    c = [example("copy", seed=1, split="train", index=i, lengths=(8, 8))[0] for i in range(10)]
    assert a != b and a != c


def test_identical_across_processes() -> None:
    code = "from posenc.data.tasks import example; print(example('sort', seed=7, split='test', index=123, lengths=(5, 30)))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == repr(example("sort", seed=7, split="test", index=123, lengths=(5, 30)))


def test_lm_batch_layout() -> None:
    ds = TaskDataset(task="reverse", train_lengths=(2, 5), batch_size=4)
    tok, b = ds.tokenizer, next(ds.train_batches())
    for row in range(4):
        inp, tgt, n = b.inputs[row].tolist(), b.targets[row].tolist(), int(b.lengths[row])
        assert inp[0] == tok.bos_id and inp[n + 1] == ds.sep_id
        x = tok.decode(inp[1 : n + 1])
        assert tgt[: n + 1] == [tok.pad_id] * (n + 1)  # no loss on the prompt or the separator
        assert tok.decode(tgt[n + 1 : 2 * n + 1]) == x[::-1] and tgt[2 * n + 1] == tok.eos_id
        assert inp[n + 2 : 2 * n + 2] == tgt[n + 1 : 2 * n + 1]  # teacher forcing: inputs are targets shifted


def test_seq2seq_batch_layout() -> None:
    ds = TaskDataset(task="copy", model_kind="seq2seq", train_lengths=(3, 3), batch_size=2)
    tok, b = ds.tokenizer, next(ds.train_batches())
    assert b.src.shape == (2, 4) and b.inputs.shape == (2, 4)
    assert (b.src[:, -1] == tok.eos_id).all() and (b.inputs[:, 0] == tok.bos_id).all()
    assert torch.equal(b.targets[:, :3], b.src[:, :3]) and (b.targets[:, 3] == tok.eos_id).all()


def test_train_stream_resumes_at_any_position() -> None:
    ds = TaskDataset(task="sort", batch_size=3)
    it = ds.train_batches(0)
    batches = [next(it) for _ in range(4)]
    resumed = next(ds.train_batches(3))
    assert torch.equal(resumed.inputs, batches[3].inputs) and torch.equal(resumed.targets, batches[3].targets)


def test_eval_sets() -> None:
    ds = TaskDataset(task="copy", train_lengths=(1, 4), test_lengths=(5, 8), eval_examples=10, eval_batch_size=4)
    assert ds.eval_names() == ["in_lengths", "out_lengths"]
    outs = list(ds.eval_batches("out_lengths"))
    assert sum(b.size for b in outs) == 10
    assert all(5 <= n <= 8 for b in outs for n in b.lengths.tolist())
    first = [b.inputs for b in ds.eval_batches("out_lengths")]
    assert all(torch.equal(a, b.inputs) for a, b in zip(first, outs))
    per = TaskDataset(task="copy", eval_lengths=[3, 30], eval_examples=5)
    assert per.eval_names() == ["len3", "len30"]
    assert set(next(per.eval_batches("len30")).lengths.tolist()) == {30}


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown task 'copi'"):
        TaskDataset(task="copi")
    with pytest.raises(ValueError, match="train_lengths"):
        TaskDataset(task="copy", train_lengths=(5, 2))
    with pytest.raises(ValueError, match="largest length 26"):
        TaskDataset(task="associative_recall", test_lengths=(20, 30))
    with pytest.raises(ValueError, match="alphabet_size"):
        TaskDataset(task="copy", options=TaskOptions(alphabet_size=27))
    assert set(TASKS) == {"copy", "reverse", "sort", "repeat", "addition", "parity", "associative_recall"}


@pytest.mark.parametrize("kwargs, message", [
    ({"train_lengths": (1.7, 3.2)}, r"train_lengths must be two ints \(min, max\), got \(1.7, 3.2\)"),  # were cut
    ({"eval_lengths": [5, 5, 7]}, r"eval_lengths names a length twice: \[5, 5, 7\]"),  # scored twice
    ({"eval_lengths": [5.5]}, "eval_lengths must be ints, got 5.5"),
    ({"batch_size": 2.5}, "batch_size must be an int, got float 2.5"),
])
def test_bad_lengths_and_sizes_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        TaskDataset(task="copy", **kwargs)


def test_numpy_ints_are_ints() -> None:
    import numpy as np

    ds = TaskDataset(task="copy", batch_size=np.int64(8), eval_examples=np.int32(4), train_lengths=(np.int64(1), 3))
    assert ds.batch_size == 8 and ds.train_lengths == (1, 3)
