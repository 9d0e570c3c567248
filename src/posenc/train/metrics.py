"""The loss, evaluation metrics, and the metric files of a run directory.

Evaluation reports, over every target that is not padding: the mean cross-entropy (no label smoothing), the
per-token perplexity ``exp(loss)``, the token accuracy (argmax == target), and the exact match: the fraction of
sequences whose every target token is predicted right. Under teacher forcing an all-correct argmax is exactly
the condition for greedy decoding to reproduce the target (each step then sees the right prefix), so exact match
here equals greedy-decoding exact match without a decoding loop. With ``Batch.lengths`` it is also reported per
task length (``eval_lengths.csv``).

Files: ``metrics.csv`` (one row per training log and per evaluation set, fixed columns), ``metrics.jsonl``
(the same rows with every key, including extra metrics), ``eval_lengths.csv``; TensorBoard event files when
``tensorboard`` is installed and asked for. On resume, rows after the checkpoint's step are dropped first, so the
files of a resumed run equal those of an uninterrupted one.

Legend: B batch, S source length, T target length, V vocabulary.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.batch import Batch

__all__ = ["CSV_COLUMNS", "EvalResult", "MetricsLog", "autocast_context", "evaluate", "forward", "token_loss"]

CSV_COLUMNS = ("step", "split", "loss", "ppl", "token_acc", "exact_match", "bleu", "chrf", "lr", "grad_norm",
               "tokens", "elapsed_s", "cpu_s")


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CPU or GPU (weights stay fp32), or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


def forward(model: nn.Module, batch: Batch, model_kind: str) -> Tensor:
    """Logits ``(B, T, V)`` of a batch. Decoder-only batches are right-padded, so the causal mask already keeps
    every real token from seeing padding and no key mask is passed; the source of a seq2seq batch is masked."""
    if model_kind == "lm":
        return model(batch.inputs, padding_mask=None)
    if batch.src is None:
        raise ValueError("a seq2seq batch needs a source (Batch.src is None)")
    return model(batch.src, batch.inputs)


def token_loss(logits: Tensor, targets: Tensor, *, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    """Summed cross-entropy over non-pad targets (fp32 logits, whatever the autocast dtype)."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id,
        label_smoothing=label_smoothing, reduction="sum",
    )


@dataclass
class EvalResult:
    loss: float
    token_acc: float
    exact_match: float
    tokens: int
    sequences: int
    per_length: dict[int, tuple[int, int]] = field(default_factory=dict)  # length -> (sequences, exact)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def row(self) -> dict[str, float]:
        return {"loss": self.loss, "ppl": self.ppl, "token_acc": self.token_acc, "exact_match": self.exact_match,
                "tokens": self.tokens, **self.extra}


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], *, model_kind: str, pad_id: int, device: torch.device,
    precision: str = "fp32",
) -> EvalResult:
    """Loss, token accuracy and exact match (overall and per length) over every batch."""
    was_training = model.training
    model.eval()
    loss_sum, tokens, correct, seqs, exact = 0.0, 0, 0, 0, 0
    per_length: dict[int, list[int]] = {}
    try:
        for batch in batches:
            batch = batch.to(device)
            with autocast_context(device, precision):
                logits = forward(model, batch, model_kind)  # (B, T, V)
            real = batch.targets != pad_id  # (B, T)
            loss_sum += float(token_loss(logits, batch.targets, pad_id=pad_id))
            hit = (logits.argmax(-1) == batch.targets) & real  # (B, T)
            tokens += int(real.sum())
            correct += int(hit.sum())
            seq_ok = (hit | ~real).all(dim=1) & real.any(dim=1)  # (B,)
            seqs += int(real.any(dim=1).sum())
            exact += int(seq_ok.sum())
            if batch.lengths is not None:
                for n, ok, counted in zip(batch.lengths.tolist(), seq_ok.tolist(), real.any(dim=1).tolist()):
                    if not counted:  # a row with no target is no sequence (as in the overall figure and torchrun's)
                        continue
                    c = per_length.setdefault(int(n), [0, 0])
                    c[0] += 1
                    c[1] += int(ok)
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("the evaluation set has no target token to score")
    return EvalResult(loss=loss_sum / tokens, token_acc=correct / tokens, exact_match=exact / max(seqs, 1),
                      tokens=tokens, sequences=seqs, per_length={n: (c[0], c[1]) for n, c in sorted(per_length.items())})


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _whole_lines(path: pathlib.Path) -> list[str]:
    """The lines of ``path`` that end in a newline: every row an append finished."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return lines[:-1] if lines and not lines[-1].endswith("\n") else lines


def _row_step(path: pathlib.Path, number: int, line: str, *, csv: bool) -> int:
    """The step of a metrics row (line ``number`` of ``path``), or a ValueError naming the file and line."""
    try:
        return int(line.split(",", 1)[0]) if csv else int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}, line {number}, is not a metrics row ({line.strip()[:80]!r}: {err}); remove that "
                         f"line, or the file, to resume") from None


class MetricsLog:
    """Appends rows to ``metrics.csv``/``metrics.jsonl``/``eval_lengths.csv`` (and TensorBoard when asked)."""

    def __init__(self, run_dir: str | pathlib.Path, *, tensorboard: bool = False) -> None:
        self.dir = pathlib.Path(run_dir)
        self.csv = self.dir / "metrics.csv"
        self.jsonl = self.dir / "metrics.jsonl"
        self.lengths = self.dir / "eval_lengths.csv"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                import warnings

                warnings.warn("tensorboard is not installed; writing metrics.csv only", stacklevel=2)
            else:
                self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop every row logged after ``step`` (rows a killed run wrote past its last checkpoint), and a last line
        cut short (no newline: the process died, or the disk filled, while appending it)."""
        for path in (self.csv, self.lengths):
            if path.is_file():
                lines = _whole_lines(path)
                kept = lines[:1] + [ln for i, ln in enumerate(lines[1:], 2)
                                    if _row_step(path, i, ln, csv=True) <= step]
                path.write_text("".join(kept), encoding="utf-8")
        if self.jsonl.is_file():
            rows = [ln for i, ln in enumerate(_whole_lines(self.jsonl), 1)
                    if ln.strip() and _row_step(self.jsonl, i, ln, csv=False) <= step]
            self.jsonl.write_text("".join(rows), encoding="utf-8")

    def _append_csv(self, path: pathlib.Path, header: Iterable[str], values: Iterable[Any]) -> None:
        new = not path.is_file()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if new:
            w.writerow(header)
        w.writerow([_fmt(v) for v in values])
        with open(path, "a", encoding="utf-8") as f:
            f.write(buf.getvalue())

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        row = {"step": step, "split": split, **values}
        self._append_csv(self.csv, CSV_COLUMNS, (row.get(c) for c in CSV_COLUMNS))
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("elapsed_s", "cpu_s"):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def log_lengths(self, step: int, split: str, per_length: dict[int, tuple[int, int]]) -> None:
        for n, (count, ok) in per_length.items():
            self._append_csv(self.lengths, ("step", "split", "length", "sequences", "exact_match"),
                             (step, split, n, count, ok / count))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
