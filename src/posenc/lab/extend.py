"""``posenc extend``: a RoPE checkpoint evaluated past its training length under each context-extension scaling.

Trained at length L, a RoPE model sees at L' = s L rotation angles it never met (Chen et al. 2023, sec. 2).
The scalings change the angles without changing a single weight -- ``linear`` (position interpolation,
positions / s), ``ntk`` (base * s^(d/(d-2))), ``dynamic`` (NTK with s from the current length), ``yarn``
(Peng et al. 2023: per-frequency ramp and attention temperature), ``llama3`` (per-frequency bands) -- so
the same weights are loaded under each spec and measured at each length. With ``finetune_steps`` each
scaled model is also trained a little at the longer length, as position interpolation prescribes (Chen et al.
report recovery within 200 steps). Expected shape: plain extrapolation (``none``) worst; ``linear`` poor
without fine-tuning and recovering after it; a factor of 1 identical to plain RoPE.

Every measurement is a row of ``OUT/results.csv`` labelled ``<scaling> x<factor>`` (``+ft`` when fine-tuned),
so an interrupted run resumes; ``OUT/results.md`` and ``OUT/<metric>.png`` summarise them.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .._checks import check_positive_number
from ..encodings import options, parse_spec
from . import results as res
from .plots import plot_metric_vs_length
from .runs import (
    RunConfig, check_buildable, check_lengths, evaluate, load_run, make_data, make_model, train_run,
)
from .tasks import CharText, SequenceTask

__all__ = ["SCALINGS", "ExtendConfig", "check_factors", "extend", "scaled_spec"]

# (label, spec, factor the fine-tune length is scaled by, fine-tuned): one measurement series
Variant = tuple[str, str, float, bool]
Data = SequenceTask | CharText

SCALINGS = ("none", "linear", "ntk", "dynamic", "yarn", "llama3")
# Names an encoding may give the length it was trained at (the scalings that need it read it from there).
_TRAINED_LENGTH_KEYS = (
    "original_max_len", "original_max_position", "original_length", "original_context", "trained_length",
    "max_position",
)


def scaled_spec(spec: str, scaling: str, factor: float, trained_length: int) -> str:
    """The RoPE spec of ``spec`` under ``scaling`` with ``factor``; ``none`` returns the spec unchanged."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}; got {scaling!r}")
    check_positive_number("factor", factor)
    name, opts = parse_spec(spec)
    if name != "rope":
        raise ValueError(f"posenc extend needs a RoPE run; this run's encoding is {spec!r}")
    if scaling == "none":
        return spec
    known = options(name)
    opts = {k: v for k, v in opts.items() if k not in ("scaling", "factor")}
    opts.update(scaling=scaling, factor=factor)
    for key in _TRAINED_LENGTH_KEYS:
        if key in known:
            opts[key] = trained_length
            break
    return "rope:" + ",".join(f"{k}={v}" for k, v in opts.items())


def check_factors(factors: Sequence[float]) -> None:
    if not factors or not all(math.isfinite(f) and f >= 1 for f in factors):
        raise ValueError(f"factors must be finite numbers >= 1 (the context is extended by them), got {factors}")


@dataclass
class ExtendConfig:
    run_dir: str
    lengths: list[int]
    scalings: list[str] = field(default_factory=lambda: list(SCALINGS))
    factors: list[float] = field(default_factory=lambda: [2.0])
    finetune_steps: int = 0
    finetune_lr: float | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.scalings if s not in SCALINGS]
        if bad:
            raise ValueError(f"unknown scalings {bad}; valid: {', '.join(SCALINGS)}")
        if not self.scalings or len(set(self.scalings)) != len(self.scalings):
            raise ValueError(f"scalings must be distinct and at least one, got {self.scalings}")
        check_factors(self.factors)
        if self.finetune_lr is not None:
            check_positive_number("finetune_lr", self.finetune_lr)
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be >= 1, got {self.lengths}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")


def _label(scaling: str, factor: float, tuned: bool) -> str:
    base = "none" if scaling == "none" else f"{scaling} x{factor:g}"
    return base + (" +ft" if tuned else "")


def trained_positions(run: RunConfig) -> int:
    """How many positions the run's self-attention saw in training: a decoder-only task example is
    ``x SEP y`` (2n + 1 inputs), a decoder input ``BOS y`` (n + 1), an LM window its context."""
    if run.task == "lm":
        return run.train_max
    return 2 * run.train_max + 1 if run.arch == "decoder" else run.train_max + 1


def _variants(config: ExtendConfig, run: RunConfig) -> list[Variant]:
    """(label, spec, factor the fine-tune length is scaled by, fine-tuned) for every measurement series."""
    out = []
    for scaling in config.scalings:
        for factor in [1.0] if scaling == "none" else config.factors:
            spec = scaled_spec(run.encoding, scaling, factor, trained_positions(run))
            out.append((_label(scaling, factor, False), spec, factor, False))
            if config.finetune_steps:
                # plain RoPE is fine-tuned at the longest extended length: Chen et al.'s direct fine-tuning
                tune_at = max(config.factors) if scaling == "none" else factor
                out.append((_label(scaling, factor, True), spec, tune_at, True))
    return out


def _tuned_config(config: ExtendConfig, run: RunConfig, spec: str, factor: float) -> RunConfig:
    """The run config of a fine-tune under ``spec`` at ``factor`` x the run's training length."""
    longer = max(run.train_min, int(round(run.train_max * factor)))
    lr = config.finetune_lr if config.finetune_lr is not None else run.lr / 10
    return replace(
        run, encoding=spec, steps=config.finetune_steps, train_max=longer,
        warmup=min(run.warmup, config.finetune_steps), lr=lr, init_from=str(config.run_dir),
        train_min=run.train_min if run.task != "lm" else longer,
    )


def _measured_configs(config: ExtendConfig, run: RunConfig, variants: Sequence[Variant]) -> list[RunConfig]:
    """The run config each series is measured under: the run with the scaled spec, or its fine-tune."""
    return [_tuned_config(config, run, spec, factor) if tuned else replace(run, encoding=spec)
            for _, spec, factor, tuned in variants]


def _check_variants(config: ExtendConfig, run: RunConfig, measured: Sequence[RunConfig], data: Data) -> None:
    """Every setting is built, and for lm every test length and fine-tune context checked against the text, before
    ``extend.json`` is written: a refused call must not lock the output directory for the corrected one."""
    check_lengths(run, config.lengths, data=data)
    for tuned in measured:
        check_lengths(tuned, [], data=data)
    check_buildable(measured)


def _finetune(config: ExtendConfig, run: RunConfig, spec: str, factor: float, run_dir: pathlib.Path):
    """Fine-tune the run under ``spec`` at ``factor`` x its training length (a resumable run of its own)."""
    tuned = _tuned_config(config, run, spec, factor)
    return train_run(tuned, run_dir), tuned


def extend(config: ExtendConfig, out_dir: str | pathlib.Path) -> str:
    """Measure every (scaling, factor[, fine-tune]) at every length; write results.csv/.md and the plot."""
    out = pathlib.Path(out_dir)
    base_model, run = load_run(config.run_dir)  # an unfinished run is refused
    variants = _variants(config, run)  # a run of another encoding than RoPE is refused
    data = make_data(run)
    _check_variants(config, run, _measured_configs(config, run, variants), data)
    out.mkdir(parents=True, exist_ok=True)
    _check_setup(out, config, run)
    csv_path = out / "results.csv"
    done = {r.key for r in res.read_rows(csv_path)}
    for label, spec, factor, tuned in variants:
        todo = [n for n in config.lengths if (label, run.seed, n) not in done]
        if not todo:
            continue
        if tuned:
            safe = "".join(c if c.isalnum() else "_" for c in label)
            model, measured = _finetune(config, run, spec, factor, out / "finetune" / safe)
        else:
            measured = replace(run, encoding=spec)
            model = make_model(measured, data.vocab_size)
            model.load_state_dict(base_model.state_dict())  # the same weights; only the angles differ
        for n in todo:
            value = evaluate(model.eval(), measured, n, data=data)
            res.append_row(csv_path, res.Row(label, run.seed, n, run.metric, value))
    return _report(config, run, out)


def _check_setup(out: pathlib.Path, config: ExtendConfig, run: RunConfig) -> None:
    """Measurements of another run, or of other fine-tuning, must not mix with these: the first call records what
    they depend on (``extend.json``); a later one with another run or fine-tuning is refused, naming what differs.
    Scalings, factors and lengths may be added (only the new measurements are taken)."""
    tunes_none = config.finetune_steps and "none" in config.scalings  # at the largest factor's length
    setup = {"run": run.to_dict(), "finetune_steps": config.finetune_steps, "finetune_lr": config.finetune_lr,
             "none_finetune_factor": max(config.factors) if tunes_none else None}
    path = out / "extend.json"
    if not path.exists():
        path.write_text(json.dumps(setup, indent=1))
        return
    old, new = _flat(json.loads(path.read_text())), _flat(setup)
    diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    if diff:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{out} holds measurements of another run or fine-tuning ({listed}); choose another --out")


def _flat(setup: dict) -> dict:
    return {**{f"run.{k}": v for k, v in setup["run"].items()}, **{k: v for k, v in setup.items() if k != "run"}}


def _report(config: ExtendConfig, run: RunConfig, out: pathlib.Path) -> str:
    order = [v[0] for v in _variants(config, run)]
    rows = [r for r in res.read_rows(out / "results.csv") if r.encoding in order and r.length in set(config.lengths)]
    train_range = (1, run.train_max) if run.task == "lm" else (run.train_min, run.train_max)
    table = res.markdown_table(rows, train_range, sorted(set(config.lengths)), order=order, label="setting")
    per_length = _per_length_table(rows, order, sorted(set(config.lengths)))
    (out / "results.md").write_text(f"# posenc extend: {config.run_dir}\n\n{table}\n{per_length}")
    plot_metric_vs_length(
        res.curves(rows, order=order), out / f"{run.metric}.png", metric=run.metric, train_range=train_range,
        log_y=run.metric in res.LOWER_IS_BETTER, title=f"{run.encoding} extended past {run.train_max}",
    )
    return table + "\n" + per_length


def _per_length_table(rows: Sequence[res.Row], order: Sequence[str], lengths: Sequence[int]) -> str:
    """One column per length (mean over seeds): the detail the in/out summary averages away."""
    values: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        values.setdefault((r.encoding, r.length), []).append(r.value)
    cells = {key: sum(v) / len(v) for key, v in values.items()}
    lines = ["| setting | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for label in order:
        vals = [cells.get((label, n)) for n in lengths]
        lines.append(f"| {label} | " + " | ".join("—" if v is None else f"{v:.3g}" for v in vals) + " |")
    return "\n".join(lines) + "\n"
