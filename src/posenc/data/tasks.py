"""Built-in synthetic tasks for length generalization, generated on the fly.

Each task maps a *task length* ``n`` to a random (input, output) pair of strings over a small alphabet:

==================== ============================================= ==========================================
task                 input (n = task length)                       output
==================== ============================================= ==========================================
``copy``             n symbols                                     the same symbols
``reverse``          n symbols                                     them reversed
``sort``             n symbols                                     them sorted
``repeat``           one symbol, then n in decimal                 the symbol repeated n times
``addition``         two n-digit numbers ``a+b``                   their sum (digits least significant first
                                                                   when ``reversed_digits``, Lee et al. 2023)
``parity``           n bits                                        ``1`` if the count of ones is odd, else ``0``
``associative_recall`` n key-value pairs (distinct letter keys,    the value of the queried key
                     digit values), then a query key
==================== ============================================= ==========================================

Training lengths are drawn uniformly from a train range and tested on a disjoint, longer test range, as in
Kazemnejad et al. (NeurIPS 2023; copy/reverse: train 1..20, test 21..40). Decoder-only models read
``BOS input SEP output EOS`` with the loss on the output only (their setup); encoder-decoder models read
the input as the source.

Determinism: example ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, crc32(s), i])``, so it
is the same in every run and every process, and a shard can take any slice of indices.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .._checks import check_positive_int
from .batch import Batch
from .dataset import pad_lm_examples, pad_seq2seq_examples
from .tokenizers import CharTokenizer

__all__ = ["TASKS", "TaskDataset", "example", "task_tokenizer"]

SEP = "<sep>"
LETTERS = string.ascii_lowercase
DIGITS = string.digits

Maker = Callable[[np.random.Generator, int, "TaskOptions"], tuple[str, str]]


@dataclass(frozen=True)
class TaskOptions:
    alphabet_size: int = 16  # symbols of copy/reverse/sort/repeat (at most 26)
    reversed_digits: bool = True  # addition: least significant digit first


def _symbols(rng: np.random.Generator, n: int, alphabet: str) -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))


def _copy(rng: np.random.Generator, n: int, o: TaskOptions) -> tuple[str, str]:
    x = _symbols(rng, n, LETTERS[: o.alphabet_size])
    return x, x


def _reverse(rng: np.random.Generator, n: int, o: TaskOptions) -> tuple[str, str]:
    x = _symbols(rng, n, LETTERS[: o.alphabet_size])
    return x, x[::-1]


def _sort(rng: np.random.Generator, n: int, o: TaskOptions) -> tuple[str, str]:
    x = _symbols(rng, n, LETTERS[: o.alphabet_size])
    return x, "".join(sorted(x))


def _repeat(rng: np.random.Generator, n: int, o: TaskOptions) -> tuple[str, str]:
    c = _symbols(rng, 1, LETTERS[: o.alphabet_size])
    return f"{c}{n}", c * n


def _number(rng: np.random.Generator, n: int) -> int:
    """A uniform ``n``-digit number (no leading zero); past int64 (19 digits and more) digit by digit."""
    lo = 0 if n == 1 else 10 ** (n - 1)
    if n <= 18:
        return int(rng.integers(lo, 10**n))
    digits = [int(rng.integers(1, 10)), *rng.integers(0, 10, size=n - 1).tolist()]
    return int("".join(map(str, digits)))


def _addition(rng: np.random.Generator, n: int, o: TaskOptions) -> tuple[str, str]:
    a, b = _number(rng, n), _number(rng, n)
    flip: Callable[[str], str] = (lambda s: s[::-1]) if o.reversed_digits else (lambda s: s)
    return f"{flip(str(a))}+{flip(str(b))}", flip(str(a + b))


def _parity(rng: np.random.Generator, n: int, o: TaskOptions) -> tuple[str, str]:
    bits = rng.integers(0, 2, size=n)
    return "".join(map(str, bits)), str(int(bits.sum()) % 2)


def _recall(rng: np.random.Generator, n: int, o: TaskOptions) -> tuple[str, str]:
    keys = [LETTERS[i] for i in rng.permutation(len(LETTERS))[:n]]
    values = _symbols(rng, n, DIGITS)
    q = int(rng.integers(0, n))
    return "".join(k + v for k, v in zip(keys, values)) + keys[q], values[q]


@dataclass(frozen=True)
class _Task:
    make: Maker
    charset: Callable[[TaskOptions], str]
    max_length: int | None = None  # the largest task length the task can express


def _letters(o: TaskOptions) -> str:
    return LETTERS[: o.alphabet_size]


TASKS: dict[str, _Task] = {
    "copy": _Task(_copy, _letters),
    "reverse": _Task(_reverse, _letters),
    "sort": _Task(_sort, _letters),
    "repeat": _Task(_repeat, lambda o: _letters(o) + DIGITS),
    "addition": _Task(_addition, lambda o: DIGITS + "+"),
    "parity": _Task(_parity, lambda o: "01"),
    "associative_recall": _Task(_recall, lambda o: LETTERS + DIGITS, max_length=len(LETTERS)),
}


def _task(name: str) -> _Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_tokenizer(name: str, options: TaskOptions = TaskOptions()) -> CharTokenizer:
    """The vocabulary of a task: the specials, ``<sep>``, and the task's characters."""
    if not 1 <= options.alphabet_size <= len(LETTERS):
        raise ValueError(f"alphabet_size must lie in [1, {len(LETTERS)}], got {options.alphabet_size}")
    return CharTokenizer(chars=_task(name).charset(options), extra_specials=(SEP,))


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def example(
    name: str, *, seed: int, split: str, index: int, lengths: tuple[int, int], options: TaskOptions = TaskOptions()
) -> tuple[str, str, int]:
    """Example ``index`` of ``split``: (input, output, task length), the length uniform in ``lengths``."""
    rng = np.random.default_rng([seed, _split_code(split), index])
    n = int(rng.integers(lengths[0], lengths[1] + 1))
    x, y = _task(name).make(rng, n, options)
    return x, y, n


def _check_range(what: str, rng: Sequence[int], limit: int | None) -> tuple[int, int]:
    if len(rng) != 2:
        raise ValueError(f"{what} must be (min, max), got {rng!r}")
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) for n in rng):  # 1.7 became 1
        raise ValueError(f"{what} must be two ints (min, max), got {tuple(rng)!r}")
    lo, hi = int(rng[0]), int(rng[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"{what} must satisfy 1 <= min <= max, got ({lo}, {hi})")
    if limit is not None and hi > limit:
        raise ValueError(f"{what} max {hi} exceeds this task's largest length {limit}")
    return lo, hi


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    """Evaluation lengths: ints, each once (a repeated one was scored and logged twice)."""
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"eval_lengths must be ints, got {n!r} in {list(lengths)!r}")
    if len(set(lengths)) != len(lengths):
        raise ValueError(f"eval_lengths names a length twice: {list(lengths)!r}")
    return [int(n) for n in lengths]


class TaskDataset:
    """A built-in task as a trainer dataset (see ``posenc.data.dataset``).

    Evaluation sets: ``in_lengths`` (the train range, unseen examples) and ``out_lengths`` (the test range), each
    ``eval_examples`` examples; with ``eval_lengths`` given, one set ``len<n>`` per length instead.
    """

    def __init__(
        self, *, task: str, model_kind: str = "lm", train_lengths: tuple[int, int] = (1, 20),
        test_lengths: tuple[int, int] = (21, 40), batch_size: int = 64, eval_examples: int = 256,
        eval_batch_size: int = 256, eval_lengths: Sequence[int] | None = None, seed: int = 0,
        options: TaskOptions = TaskOptions(),
    ) -> None:
        spec = _task(task)
        if model_kind not in ("lm", "seq2seq"):
            raise ValueError(f"model_kind must be 'lm' or 'seq2seq', got {model_kind!r}")
        batch_size, eval_examples, eval_batch_size = (check_positive_int(what, v) for what, v in (
            ("batch_size", batch_size), ("eval_examples", eval_examples), ("eval_batch_size", eval_batch_size)))
        self.task, self.model_kind, self.seed, self.options = task, model_kind, seed, options
        self.train_lengths = _check_range("train_lengths", train_lengths, spec.max_length)
        self.test_lengths = _check_range("test_lengths", test_lengths, spec.max_length)
        self.eval_lengths = _check_lengths(eval_lengths) if eval_lengths else None
        for n in self.eval_lengths or []:
            _check_range(f"eval length {n}", (n, n), spec.max_length)
        self.batch_size, self.eval_examples, self.eval_batch_size = batch_size, eval_examples, eval_batch_size
        self.tokenizer = task_tokenizer(task, options)
        self.sep_id = self.tokenizer.special_id(SEP)

    def describe(self) -> str:
        return (f"task {self.task} ({self.model_kind}), train lengths {self.train_lengths[0]}..{self.train_lengths[1]}, "
                f"test lengths {self.test_lengths[0]}..{self.test_lengths[1]}, vocabulary {self.tokenizer.vocab_size}")

    def collate(self, examples: Sequence[tuple[str, str, int]]) -> Batch:
        enc = self.tokenizer.encode
        xs, ys, ns = [enc(x) for x, _, _ in examples], [enc(y) for _, y, _ in examples], [n for *_, n in examples]
        if self.model_kind == "lm":
            return pad_lm_examples(xs, ys, tokenizer=self.tokenizer, sep_id=self.sep_id, lengths=ns)
        return pad_seq2seq_examples(xs, ys, tokenizer=self.tokenizer, lengths=ns)

    def _examples(self, split: str, start: int, count: int, lengths: tuple[int, int]) -> list[tuple[str, str, int]]:
        return [example(self.task, seed=self.seed, split=split, index=i, lengths=lengths, options=self.options)
                for i in range(start, start + count)]

    def train_batches(self, start: int = 0) -> Iterator[Batch]:
        k = start
        while True:
            yield self.collate(self._examples("train", k * self.batch_size, self.batch_size, self.train_lengths))
            k += 1

    def eval_names(self) -> list[str]:
        if self.eval_lengths:
            return [f"len{n}" for n in self.eval_lengths]
        return ["in_lengths", "out_lengths"]

    def _eval_spec(self, name: str) -> tuple[str, tuple[int, int]]:
        if name == "in_lengths":
            return "valid", self.train_lengths
        if name == "out_lengths":
            return "test", self.test_lengths
        if self.eval_lengths and name.startswith("len") and name[3:].isdigit() and int(name[3:]) in self.eval_lengths:
            n = int(name[3:])
            return f"test_len{n}", (n, n)
        raise ValueError(f"no evaluation set {name!r}; have {', '.join(self.eval_names())}")

    def eval_batches(self, name: str) -> Iterator[Batch]:
        split, lengths = self._eval_spec(name)
        for start in range(0, self.eval_examples, self.eval_batch_size):
            count = min(self.eval_batch_size, self.eval_examples - start)
            yield self.collate(self._examples(split, start, count, lengths))
