"""``posenc compare``: train each encoding x seed on one task with the same model, budget and data, then
measure every run at every length of a test range.

The question is Kazemnejad et al.'s (2023) and Press et al.'s (2022): trained on short sequences, which
encoding still works on longer ones? Every run is a run directory under ``OUT/runs``; every measurement is
one row of ``OUT/results.csv``, appended as soon as it is taken. Running the same command again resumes:
finished measurements are kept, finished runs are reused, an interrupted run continues from its last
checkpoint. ``OUT/results.md`` holds the summary table and ``OUT/<metric>.png`` the metric against length,
one line per encoding, with the training lengths shaded.

The runs are reached through a small interface (:class:`Backend`: train one run, evaluate it at one length),
so another trainer can stand behind the same tables and plots.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from torch import nn

from ..encodings import build, names
from . import results as res
from .runs import RunConfig, _read_meta, check_buildable, check_lengths, evaluate, train_run

__all__ = ["DEFAULT_ENCODINGS", "Backend", "CompareConfig", "CompareOutput", "LabBackend", "compare", "run_dir_name"]

# The encodings Kazemnejad et al. (2023) and Press et al. (2022) compare, plus the learned table.
DEFAULT_ENCODINGS = ("none", "sinusoidal", "learned", "rope", "alibi", "t5")


class Backend(Protocol):
    """What ``compare`` needs from a trainer."""

    def train(self, config: RunConfig, run_dir: pathlib.Path, on_step: Callable[[int], None]) -> nn.Module:
        """Train (resume, or just load when finished) one run and return its model."""
        ...

    def steps_done(self, config: RunConfig, run_dir: pathlib.Path) -> int:
        """Training steps the run directory already holds (0 when new)."""
        ...

    def evaluate(self, model: nn.Module, config: RunConfig, length: int) -> float:
        """The run's metric at one test length."""
        ...

    # Optional: ``check(configs)`` raises for a run the trainer would refuse; ``compare`` calls it before it writes
    # anything, so a refused setting does not leave a setup file that locks the output directory.


class LabBackend:
    """The lab's own trainer (:mod:`posenc.lab.runs`)."""

    def train(self, config: RunConfig, run_dir: pathlib.Path, on_step: Callable[[int], None]) -> nn.Module:
        return train_run(config, run_dir, on_step=on_step)

    def steps_done(self, config: RunConfig, run_dir: pathlib.Path) -> int:
        meta = _read_meta(run_dir)
        return 0 if meta is None else int(meta["step"])

    def evaluate(self, model: nn.Module, config: RunConfig, length: int) -> float:
        return evaluate(model, config, length)

    def check(self, configs: Sequence[RunConfig]) -> None:
        check_buildable(configs)


@dataclass
class CompareConfig:
    """The comparison: one base run config, varied over ``encodings`` x ``seeds``, measured at ``test_lengths``."""

    base: RunConfig = field(default_factory=RunConfig)
    encodings: list[str] = field(default_factory=lambda: list(DEFAULT_ENCODINGS))
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    test_lengths: list[int] = field(default_factory=lambda: list(range(1, 41)))

    def __post_init__(self) -> None:
        if not self.encodings:
            raise ValueError("give at least one encoding to compare")
        if len(set(self.encodings)) != len(self.encodings):
            raise ValueError(f"encodings repeat: {self.encodings}")
        missing = []
        for spec in self.encodings:
            name = spec.partition(":")[0].strip()
            if name not in names():
                missing.append(name)
            else:
                b = self.base  # unknown options and bad values fail here, before any training
                for causal in (True, False) if b.arch == "seq2seq" else (True,):  # an encoder is bidirectional
                    build(spec, d_model=b.d_model, num_heads=b.num_heads, head_dim=b.d_model // b.num_heads,
                          causal=causal)
        if missing:
            raise ValueError(f"encodings {missing} are not registered in this posenc; registered: {', '.join(names())}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if not self.test_lengths or min(self.test_lengths) < 1:
            raise ValueError(f"test lengths must be >= 1, got {self.test_lengths}")
        check_lengths(self.base, self.test_lengths)  # lm: the context and test lengths fit the text

    @property
    def train_range(self) -> tuple[int, int]:
        return (1, self.base.train_max) if self.base.task == "lm" else (self.base.train_min, self.base.train_max)

    def runs(self) -> list[RunConfig]:
        return [replace(self.base, encoding=e, seed=s) for e in self.encodings for s in self.seeds]


@dataclass
class CompareOutput:
    rows: list[res.Row]
    csv: pathlib.Path
    table: pathlib.Path
    plot: pathlib.Path
    markdown: str


def run_dir_name(config: RunConfig) -> str:
    """A file-system-safe directory name for one (encoding, seed) run."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in config.encoding)
    return f"{safe}-seed{config.seed}"


def _shared(base: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in base.to_dict().items() if k not in ("encoding", "seed")}


def _check_base(out: pathlib.Path, base: RunConfig) -> None:
    """Results of another base config must not mix with these: refuse, saying what differs."""
    path = out / "compare.json"
    if path.exists():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), v) for k, v in _shared(base).items() if saved.get(k) != v}
        if diff:
            listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds a comparison of another setup ({listed}); choose another --out")


def _record_base(out: pathlib.Path, base: RunConfig) -> None:
    """Written only once every check has passed: a refused call must not lock the directory for the corrected
    one."""
    path = out / "compare.json"
    if not path.exists():
        path.write_text(json.dumps(_shared(base), indent=1))


class _Progress:
    """One bar over every remaining training step and measurement; says which run and how long to go.

    Training steps and measurements take very different times (a measurement evaluates hundreds of examples, and
    the first one of a finished run includes loading it), so each kind keeps its own rate: the time to go is the
    steps left at the steps' rate plus the measurements left at theirs (a kind not seen yet takes the other's)."""

    def __init__(self, total_steps: int, total_measures: int, enabled: bool) -> None:
        self.bar = None
        self.left = {"step": total_steps, "length": total_measures}
        self.spent, self.count = {"step": 0.0, "length": 0.0}, {"step": 0, "length": 0}
        self.label, self.last = "", time.monotonic()
        self.mark = self.last
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps + total_measures, unit="it", dynamic_ncols=True, file=sys.stderr)

    def run(self, label: str) -> None:
        self.label = label
        if self.bar is not None:
            self.bar.set_description(label)
        else:
            print(f"{label} ({self.eta()})", file=sys.stderr, flush=True)

    def step(self, n: int = 1, **post: Any) -> None:
        now = time.monotonic()
        kind = "length" if "length" in post else "step"
        self.spent[kind] += now - self.mark
        self.count[kind] += n
        self.left[kind] -= n
        self.mark = now
        if self.bar is not None:
            self.bar.update(n)
            if post:
                self.bar.set_postfix(post, refresh=False)
        elif time.monotonic() - self.last > 30:  # no terminal: a line every half minute
            self.last = time.monotonic()
            where = " ".join(f"{k} {v}" for k, v in post.items())
            print(f"{self.label}: {where} ({self.eta()})", file=sys.stderr, flush=True)

    def eta(self) -> str:
        rates = {k: self.spent[k] / self.count[k] for k in self.count if self.count[k]}
        if not rates:
            return "estimating time to go"
        left = sum(n * rates.get(k, next(iter(rates.values()))) for k, n in self.left.items())
        return f"about {left / 60:.1f} min to go"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def compare(
    config: CompareConfig, out_dir: str | pathlib.Path, *, backend: Backend | None = None, progress: bool = True
) -> CompareOutput:
    """Run (or resume) the comparison and write ``results.csv``, ``results.md`` and the plot."""
    backend = backend if backend is not None else LabBackend()
    out = pathlib.Path(out_dir)
    _check_base(out, config.base)
    check = getattr(backend, "check", None)
    if check is not None:
        check(config.runs())
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _record_base(out, config.base)
    csv_path = out / "results.csv"
    done = {r.key for r in res.read_rows(csv_path)}
    plan = []
    for run in config.runs():
        todo = [n for n in config.test_lengths if (run.encoding, run.seed, n) not in done]
        if todo:
            run_dir = out / "runs" / run_dir_name(run)
            plan.append((run, run_dir, todo, run.steps - min(run.steps, backend.steps_done(run, run_dir))))
    bar = _Progress(sum(p[3] for p in plan), sum(len(p[2]) for p in plan), progress)
    try:
        for i, (run, run_dir, todo, _) in enumerate(plan, start=1):
            bar.run(f"[{i}/{len(plan)}] {run.encoding} seed {run.seed}")
            model = backend.train(run, run_dir, lambda s: bar.step(step=f"{s}/{run.steps}"))
            for n in todo:
                value = backend.evaluate(model, run, n)
                res.append_row(csv_path, res.Row(run.encoding, run.seed, n, run.metric, value))
                bar.step(length=n)
    finally:
        bar.close()
    return write_report(config, out)


def write_report(config: CompareConfig, out: pathlib.Path) -> CompareOutput:
    """``results.md`` and ``<metric>.png`` from the rows of ``results.csv`` for this config's runs."""
    from .plots import plot_metric_vs_length

    wanted = {(r.encoding, r.seed) for r in config.runs()}
    lengths = set(config.test_lengths)
    rows = [r for r in res.read_rows(out / "results.csv") if (r.encoding, r.seed) in wanted and r.length in lengths]
    metric = config.base.metric
    table = res.markdown_table(rows, config.train_range, sorted(lengths), order=config.encodings)
    md = out / "results.md"
    md.write_text(f"# posenc compare: {_describe(config.base)}\n\n{table}")
    plot = plot_metric_vs_length(
        res.curves(rows, order=config.encodings), out / f"{metric}.png", metric=metric,
        train_range=config.train_range, log_y=metric in res.LOWER_IS_BETTER, title=_describe(config.base),
    )
    return CompareOutput(rows, out / "results.csv", md, plot, table)


def _describe(base: RunConfig) -> str:
    task = f"lm on {pathlib.Path(base.text).name}" if base.task == "lm" else base.task
    arch = "decoder-only" if base.arch == "decoder" else "encoder-decoder"
    trained = f"context {base.train_max}" if base.task == "lm" else f"train lengths {base.train_min}–{base.train_max}"
    return f"{task}, {arch}, {base.num_layers} layers, d={base.d_model}, {base.steps} steps, {trained}"
