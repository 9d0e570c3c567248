from __future__ import annotations

import itertools

import numpy as np
import pytest

from posenc.data.buckets import TokenBatcher

RNG = np.random.default_rng(0)
SRC = RNG.integers(1, 40, size=500).tolist()
TGT = RNG.integers(1, 40, size=500).tolist()


def make(**kw) -> TokenBatcher:
    return TokenBatcher(src_lengths=SRC, tgt_lengths=TGT, **{"max_tokens": 256, "seed": 3, **kw})


def test_every_example_once_per_epoch_under_the_budget() -> None:
    b = make()
    for epoch in range(3):
        batches = b.epoch(epoch)
        assert len(batches) == len(b)
        assert sorted(itertools.chain.from_iterable(batches)) == list(range(500))
        for idx in batches:
            width = max(max(SRC[i], TGT[i]) for i in idx)
            assert len(idx) * width <= 256
    assert b.epoch(0) != b.epoch(1)  # reshuffled every epoch
    assert b.epoch(1) == make().epoch(1)  # and a pure function of (seed, epoch)
    assert b.epoch(1) != make(seed=4).epoch(1)


def test_batches_are_filled_greedily_in_length_order() -> None:
    b = make(shuffle=False)
    batches = b.epoch(0)
    cost = [max(s, t) for s, t in zip(SRC, TGT)]
    flat = [cost[i] for i in itertools.chain.from_iterable(batches)]
    assert flat == sorted(flat)
    for idx, nxt in zip(batches, batches[1:]):
        # adding the next example would have broken the budget
        assert (len(idx) + 1) * max(cost[i] for i in idx + nxt[:1]) > 256


def test_stream_resumes_at_any_position() -> None:
    b = make()
    n = len(b)
    full = list(itertools.islice(b.stream(), 3 * n))
    assert [p for p, _ in full] == list(range(3 * n))
    assert [x for _, x in full[:n]] == b.epoch(0) and [x for _, x in full[2 * n :]] == b.epoch(2)
    for start in (1, n - 1, n, 2 * n + 5):
        assert list(itertools.islice(b.stream(start), 3 * n - start)) == full[start:]


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"max_tokens=30 is smaller than the longest example \(39 tokens"):
        make(max_tokens=30)
    with pytest.raises(ValueError, match="500 source lengths but 2 target lengths"):
        TokenBatcher(src_lengths=SRC, tgt_lengths=[1, 2], max_tokens=256)
    with pytest.raises(ValueError, match="length 0"):
        TokenBatcher(src_lengths=[0, 2], tgt_lengths=[1, 2], max_tokens=256)
    with pytest.raises(ValueError, match="start must be a non-negative int"):
        next(make().stream(-1))
