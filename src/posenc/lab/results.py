"""The results of a comparison: ``results.csv`` rows, their summary table, and the curves to draw.

One row per (encoding, seed, length): ``encoding,seed,length,metric,value``. Rows are appended and flushed one
at a time, so a run that stops half-way keeps what it measured and resumes from the first missing row.

The summary reports, per encoding, the mean over in-distribution lengths (inside the training range) and over
out-of-distribution lengths (outside it), each first averaged per seed and then summarised as mean +- standard
deviation over seeds (the spread the seeds give, as Kazemnejad et al. 2023 report over 3 seeds).
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FIELDS", "Row", "append_row", "curves", "markdown_table", "read_rows", "summary"]

FIELDS = ("encoding", "seed", "length", "metric", "value")

# Metrics where lower is better (the table and plots say so).
LOWER_IS_BETTER = frozenset({"perplexity", "loss"})


@dataclass(frozen=True)
class Row:
    encoding: str
    seed: int
    length: int
    metric: str
    value: float

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.encoding, self.seed, self.length)


def read_rows(path: str | pathlib.Path) -> list[Row]:
    """The rows of a ``results.csv`` (empty if the file does not exist). A malformed row is a ``ValueError``
    naming the file and line, never skipped."""
    p = pathlib.Path(path)
    if not p.exists():
        return []
    rows = []
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        if tuple(reader.fieldnames) != FIELDS:
            raise ValueError(f"{p}: header {reader.fieldnames} is not {list(FIELDS)}")
        for i, r in enumerate(reader, start=2):
            try:
                rows.append(Row(r["encoding"], int(r["seed"]), int(r["length"]), r["metric"], float(r["value"])))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{p}, line {i}: malformed row {r}: {err}") from None
    return rows


def append_row(path: str | pathlib.Path, row: Row) -> None:
    """Append one row (writing the header first if the file is new) and flush it to disk."""
    p = pathlib.Path(path)
    new = not p.exists() or p.stat().st_size == 0
    with p.open("a", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if new:
            w.writerow(FIELDS)
        w.writerow([row.encoding, row.seed, row.length, row.metric, repr(float(row.value))])
        f.flush()


def _by(rows: Iterable[Row]) -> dict[str, dict[int, dict[int, float]]]:
    out: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        out[r.encoding][r.seed][r.length] = r.value
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


@dataclass(frozen=True)
class Summary:
    encoding: str
    seeds: int
    in_mean: float
    in_std: float
    out_mean: float
    out_std: float


def summary(rows: Iterable[Row], train_range: tuple[int, int], order: Sequence[str] | None = None) -> list[Summary]:
    """Per encoding: in- and out-of-distribution means (per seed, then mean and std over seeds)."""
    lo, hi = train_range
    table = _by(rows)
    out = []
    for enc in order if order is not None else sorted(table):
        if enc not in table:
            continue
        ins, outs = [], []
        for per_len in table[enc].values():
            i = [v for n, v in per_len.items() if lo <= n <= hi]
            o = [v for n, v in per_len.items() if not lo <= n <= hi]
            if i:
                ins.append(float(np.mean(i)))
            if o:
                outs.append(float(np.mean(o)))
        out.append(Summary(enc, len(table[enc]), *_mean_std(ins), *_mean_std(outs)))
    return out


def _fmt(mean: float, std: float, seeds: int, percent: bool) -> str:
    if math.isnan(mean):
        return "—"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{mean * scale:.1f}{unit}" if percent else f"{mean:.3g}"
    if seeds > 1:
        text += f" ± {std * scale:.1f}" if percent else f" ± {std:.2g}"
    return text


def _span(*sides: Sequence[int]) -> str:
    """``min–max`` of each non-empty group of lengths, comma-separated: the lengths outside training may lie below
    and above it (``1–2, 6–8``)."""
    parts = [f"{min(ns)}–{max(ns)}" for ns in sides if ns]
    return ", ".join(parts) if parts else "none"


def markdown_table(
    rows: Sequence[Row],
    train_range: tuple[int, int],
    test_lengths: Sequence[int],
    order: Sequence[str] | None = None,
    *,
    label: str = "encoding",
) -> str:
    """The Markdown summary: one line per encoding, in-distribution and out-of-distribution means."""
    rows = list(rows)
    if not rows:
        return "(no results)\n"
    metric = rows[0].metric
    percent = metric not in LOWER_IS_BETTER
    lo, hi = train_range
    ood = [n for n in test_lengths if not lo <= n <= hi]
    ind = [n for n in test_lengths if lo <= n <= hi]
    better = "lower is better" if not percent else "higher is better"
    below, above = [n for n in ood if n < lo], [n for n in ood if n > hi]
    lines = [
        f"| {label} | seeds | {metric}, in distribution ({_span(ind)}) | {metric}, beyond training "
        f"({_span(below, above)}) |",
        "|---|---|---|---|",
    ]
    for s in summary(rows, train_range, order):
        lines.append(
            f"| `{s.encoding}` | {s.seeds} | {_fmt(s.in_mean, s.in_std, s.seeds, percent)} "
            f"| {_fmt(s.out_mean, s.out_std, s.seeds, percent)} |"
        )
    lines.append("")
    lines.append(f"Training lengths {lo}–{hi}; {better}; ± is the standard deviation over seeds.")
    return "\n".join(lines) + "\n"


def curves(
    rows: Iterable[Row], order: Sequence[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{encoding: (lengths, mean over seeds, std over seeds)}`` for the metric-vs-length plot."""
    table = _by(rows)
    out = {}
    for enc in order if order is not None else sorted(table):
        if enc not in table:
            continue
        lengths = sorted({n for per in table[enc].values() for n in per})
        mean, std = [], []
        for n in lengths:
            vals = [per[n] for per in table[enc].values() if n in per]
            m, s = _mean_std(vals)
            mean.append(m)
            std.append(s)
        out[enc] = (np.asarray(lengths), np.asarray(mean), np.asarray(std))
    return out
