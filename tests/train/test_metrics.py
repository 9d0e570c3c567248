from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from posenc.data.batch import Batch
from posenc.train.metrics import MetricsLog, evaluate, token_loss


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits


def test_evaluate_against_a_direct_computation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6)
    targets = torch.tensor([[0, 2, 3, 1], [0, 0, 5, 0], [4, 4, 4, 4]])  # pad_id 0
    preds = logits.argmax(-1)
    targets[0, 1:] = preds[0, 1:]  # row 0: every real target right
    targets[1, 2] = preds[1, 2]  # row 1: its one real target right
    targets[2, :3] = preds[2, :3]
    targets[2, 3] = (preds[2, 3] % 5) + 1 if preds[2, 3] != 0 else 3  # row 2: the last one wrong
    batch = Batch(inputs=torch.zeros(3, 4, dtype=torch.long), targets=targets, lengths=torch.tensor([3, 3, 4]))
    res = evaluate(FixedLogits(logits), [batch], model_kind="lm", pad_id=0, device=torch.device("cpu"))
    real = targets != 0
    want = F.cross_entropy(logits[real], targets[real])
    assert res.loss == pytest.approx(float(want), rel=1e-6)
    assert res.ppl == pytest.approx(math.exp(float(want)), rel=1e-6)
    assert res.tokens == int(real.sum()) == 8
    assert res.token_acc == pytest.approx(7 / 8)
    assert res.exact_match == pytest.approx(2 / 3)
    assert res.per_length == {3: (2, 2), 4: (1, 0)}


def test_a_row_without_targets_is_no_sequence_per_length_either() -> None:
    """Left out of the overall exact match, and (now) of the per-length table, as the sharded evaluation does."""
    logits = torch.zeros(3, 4, 6)
    logits[0, 0, 3] = logits[0, 1, 4] = logits[0, 2, 5] = 1.0  # row 0 right at every real target
    targets = torch.tensor([[3, 4, 5, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # row 1 wrong (argmax 0), row 2 all padding
    batch = Batch(inputs=torch.zeros(3, 4, dtype=torch.long), targets=targets, lengths=torch.tensor([3, 1, 2]))
    res = evaluate(FixedLogits(logits), [batch], model_kind="lm", pad_id=0, device=torch.device("cpu"))
    assert res.sequences == 2 and res.exact_match == pytest.approx(0.5)
    assert res.per_length == {1: (1, 0), 3: (1, 1)}


def test_token_loss_with_label_smoothing() -> None:
    logits, targets = torch.randn(2, 5, 7), torch.randint(1, 7, (2, 5))
    targets[0, 0] = 0
    got = token_loss(logits, targets, pad_id=0, label_smoothing=0.1)
    keep = targets != 0
    want = F.cross_entropy(logits[keep], targets[keep], label_smoothing=0.1, reduction="sum")
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_metrics_log_truncates_rows_after_a_step(tmp_path: pathlib.Path) -> None:
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.log(step, "train", {"loss": 1.0 / step})
        log.log_lengths(step, "out", {5: (4, 1)})
    log.truncate_after(2)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,split,loss") and [ln.split(",")[0] for ln in lines[1:]] == ["1", "2"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "eval_lengths.csv").read_text().splitlines()[1:] == ["1,out,5,4,0.25", "2,out,5,4,0.25"]


def test_a_row_cut_short_is_dropped_on_resume(tmp_path: pathlib.Path) -> None:
    """A process killed (or a disk filled) mid-append leaves a last line without its newline: resume drops it,
    and the next row starts on a line of its own."""
    log = MetricsLog(tmp_path)
    for step in (1, 2):
        log.log(step, "train", {"loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "tra')
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("3,train,0.3")
    log.truncate_after(2)
    log.log(3, "train", {"loss": 0.25})
    assert [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert [ln.split(",")[:3] for ln in (tmp_path / "metrics.csv").read_text().splitlines()[1:]] == [
        ["1", "train", "1.0"], ["2", "train", "0.5"], ["3", "train", "0.25"]]


def test_a_line_that_is_no_row_is_named(tmp_path: pathlib.Path) -> None:
    log = MetricsLog(tmp_path)
    log.log(1, "train", {"loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("garbage\n")
    log.log(2, "train", {"loss": 0.5})
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2, is not a metrics row \('garbage'"):
        log.truncate_after(1)
