"""The checks a run's config passes before anything is written: types, choices and ranges, each error naming the
setting and its value. They hold for a config from a file, from the command line and built in Python alike, and
run before the run directory is touched, so a refused config leaves no ``config.json`` behind."""

from __future__ import annotations

import math

from .._checks import check_choice, check_positive_number
from ..data.bpe import VOCAB_FLOOR as BPE_VOCAB_FLOOR
from .config import RunConfig, check_types
from .distributed import PARALLEL_MODES
from .faults import NONFINITE_POLICIES

__all__ = ["check_run_config"]


def _at_least(what: str, value: float, low: float) -> None:
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"{what} must be a finite number >= {low:g}, got {value}")


def _at_least_one(*settings: tuple[str, int]) -> None:
    """Counts and sizes: each ``(name, value)`` must be >= 1."""
    for what, v in settings:
        if v < 1:
            raise ValueError(f"{what} must be >= 1, got {v}")


def _within(what: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        raise ValueError(f"{what} must lie in [{low:g}, {high:g}{')' if high_open else ']'}, got {value}")


def _check_train(cfg: RunConfig) -> None:
    t = cfg.train
    _at_least_one(("train.steps", t.steps), ("train.grad_accum", t.grad_accum), ("train.log_every", t.log_every),
                  ("train.checkpoint_every", t.checkpoint_every))
    check_choice("train.precision", t.precision, ("fp32", "bf16"))
    check_choice("train.attention", t.attention, ("auto", "fused", "math"))
    check_choice("train.time_limit_clock", t.time_limit_clock, ("wall", "cpu"))
    check_choice("train.nonfinite", t.nonfinite, NONFINITE_POLICIES)
    check_choice("train.progress", t.progress, ("auto", "on", "off"))
    check_choice("train.parallel", t.parallel, PARALLEL_MODES)
    _at_least("train.seed", t.seed, 0)  # NumPy's generators, which draw the batches, take no negative seed
    _at_least("train.threads (0 = torch's default)", t.threads, 0)
    _at_least("train.keep_checkpoints (0 = keep all)", t.keep_checkpoints, 0)
    _at_least("train.time_limit (0 = none)", t.time_limit, 0)
    check_positive_number("train.dist_timeout (seconds)", t.dist_timeout)


def _check_optim(cfg: RunConfig) -> None:
    o = cfg.optim
    check_choice("optim.name", o.name, ("adam", "adamw"))
    check_choice("optim.schedule", o.schedule, ("noam", "cosine", "constant"))
    check_positive_number("optim.lr", o.lr)
    _at_least("optim.warmup_steps", o.warmup_steps, 0)
    _within("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0)
    _within("optim.label_smoothing", o.label_smoothing, 0.0, 1.0, high_open=True)
    _at_least("optim.grad_clip (0 = off)", o.grad_clip, 0)
    _at_least("optim.weight_decay", o.weight_decay, 0)
    _within("optim.beta1", o.beta1, 0.0, 1.0, high_open=True)
    _within("optim.beta2", o.beta2, 0.0, 1.0, high_open=True)
    check_positive_number("optim.eps", o.eps)


def _check_model_and_eval(cfg: RunConfig) -> None:
    m, e = cfg.model, cfg.eval
    _at_least_one(("model.d_model", m.d_model), ("model.num_heads", m.num_heads),
                  ("model.dim_feedforward", m.dim_feedforward))
    _within("model.dropout", m.dropout, 0.0, 1.0)
    if m.kind == "lm" and m.decoder_encoding:
        raise ValueError(f"model.decoder_encoding ({m.decoder_encoding!r}) is for seq2seq models; a model.kind 'lm' "
                         "run takes model.encoding")
    _at_least("eval.every (0 = only at the end)", e.every, 0)
    _at_least("eval.max_blocks (0 = all)", e.max_blocks, 0)
    if e.lengths and cfg.data.kind != "task":
        raise ValueError(f"eval.lengths ({e.lengths}) applies to built-in tasks; this run's data.kind is "
                         f"{cfg.data.kind!r}")


def _check_data(cfg: RunConfig) -> None:
    """The data settings the dataset builders would refuse under their own parameter names (``batch_size``), named
    as settings here; only those of the chosen ``data.kind`` are looked at."""
    d = cfg.data
    _at_least_one(("data.batch_size", d.batch_size))
    if d.kind == "text":
        check_choice("data.tokenizer", d.tokenizer, ("char", "bpe"))
        _at_least_one(("data.block_size", d.block_size))
        if not 0.0 < d.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must lie in (0, 1), got {d.val_fraction}")
    if d.kind == "translation":
        _at_least_one(("data.max_len", d.max_len), ("data.max_tokens", d.max_tokens))
    if (d.kind == "translation" or (d.kind == "text" and d.tokenizer == "bpe")) and d.bpe_vocab_size < BPE_VOCAB_FLOOR:
        raise ValueError(f"data.bpe_vocab_size must be >= {BPE_VOCAB_FLOOR} (256 bytes + the special tokens), got "
                         f"{d.bpe_vocab_size}")


def check_run_config(cfg: RunConfig) -> None:
    """A TypeError or ValueError naming the first setting of ``cfg`` that cannot run."""
    check_types(cfg)
    _check_train(cfg)
    _check_optim(cfg)
    _check_data(cfg)
    _check_model_and_eval(cfg)
