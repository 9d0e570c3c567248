"""The training loop: ``train(config)`` trains, evaluates, checkpoints and resumes one run.

Any dataset with the interface of ``posenc.data.dataset`` plugs in (tasks, text, translation); the loop
handles decoder-only (``LanguageModel``) and encoder-decoder (``Seq2Seq``) models alike, because a ``Batch``
says what each needs. One update = ``grad_accum`` batches; the loss is the summed cross-entropy over every
non-pad target of those batches divided by their count, so accumulation gives the same gradient as one big batch.

Reproducibility: the model is initialized from ``torch.manual_seed(seed)``, batch ``k`` is a pure function of
``(seed, k)``, the schedule is a pure function of the step, and a checkpoint restores weights, optimizer state,
RNG states, the data position and the running loss sums; metric rows written after the checkpoint are dropped on
resume. So a run killed (even with SIGKILL) and resumed ends bit-identical to an uninterrupted one
(``tests/train/test_resume.py`` does exactly that). ``time_limit`` is the exception: where it stops depends on
the clock.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..data.batch import Batch
from ..data.dataset import Dataset
from ..data.tokenizers import load_tokenizer
from .checkpoint import atomic_write_text, checkpoint_dirs, latest_valid, load_checkpoint, read_state, save_checkpoint
from ..fast import flush_denormals, reuse_freed_memory, use_fast_path
from .config import RunConfig
from .distributed import Parallel, SilentLog, check_global_batch, evaluate_sharded, shard_batch
from .drift import check_resume, run_signature
from .faults import (NonFiniteLossError, TrainingError, check_finite_weights, is_finite_step,
                     last_checkpoint_note, memory_guard)
from .metrics import EvalResult, MetricsLog, autocast_context, evaluate, forward, token_loss
from .optim import build_optimizer, build_schedule
from .run import build_dataset, build_model, check_compatible, default_run_dir, resolve_device
from .validate import check_run_config

__all__ = ["TrainResult", "evaluate_sets", "format_results", "train"]

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    run_dir: pathlib.Path
    step: int
    evals: dict[str, EvalResult]


@dataclass
class _Setup:
    cfg: RunConfig
    run_dir: pathlib.Path
    device: torch.device
    dataset: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    start_step: int = 0
    data_position: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    par: Parallel = dataclasses.field(default_factory=Parallel)
    fwd: nn.Module | None = None  # what training calls: DDP's wrapper, or (FSDP) the model sharded; None: model


def _resume_point(cfg: RunConfig, run_dir: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]] | None:
    mode = cfg.train.resume
    if mode == "never":
        if checkpoint_dirs(run_dir):
            raise ValueError(f"run directory {run_dir} already holds checkpoints and train.resume is 'never'; "
                             "choose another --run-dir or resume with --resume auto")
        return None
    if mode == "auto":
        return latest_valid(run_dir)
    path = pathlib.Path(mode)
    return path, read_state(path)


def _choose_attention(model: nn.Module, cfg: RunConfig, device: torch.device) -> None:
    """``auto``: the plain math path for bf16 on CPU, where the fused CPU kernel's bf16 backward is slow (measured
    with one thread, width 128, 4 layers, 32 x 128 tokens: 0.28 s CPU per step on the math path, 0.39 s fused);
    the fused kernel everywhere else."""
    from ..attention import MultiHeadAttention

    mode = cfg.train.attention
    use_math = mode == "math" or (mode == "auto" and cfg.train.precision == "bf16" and device.type == "cpu")
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.use_math = use_math or m.use_math


def _setup(cfg: RunConfig, log: Callable[[str], None], par: Parallel, device: torch.device) -> _Setup:
    if cfg.train.flush_denormal:
        flush_denormals()  # before the thread pool starts, so that its workers inherit the mode
    if cfg.train.reuse_memory:
        reuse_freed_memory()  # glibc only; elsewhere nothing changes
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    run_dir = pathlib.Path(cfg.train.run_dir) if cfg.train.run_dir else default_run_dir(cfg)
    for path in (run_dir, run_dir / "checkpoints"):
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; the run directory and its checkpoints/ must be directories "
                             "(choose another train.run_dir)")
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_point(cfg, run_dir)
    saved_tok = run_dir / "tokenizer.json"
    tokenizer = None
    if resume is not None and saved_tok.is_file():
        tokenizer = load_tokenizer(saved_tok)
    dataset = build_dataset(cfg, tokenizer=tokenizer)
    if hasattr(dataset, "describe"):
        log(dataset.describe())
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, dataset.tokenizer).to(device)
    _choose_attention(model, cfg, device)
    if cfg.train.fast_path:
        use_fast_path(model)
    sharded = par.active and par.mode == "fsdp"  # FSDP: weights load before sharding, optimizer state after
    if resume is not None:
        check_compatible(resume[1], cfg.model, dataset.tokenizer, str(resume[0]))
        if sharded:
            load_checkpoint(resume[0], model=model, restore_rng=True, state=resume[1])
    fwd = par.wrap(model, device)
    optimizer = build_optimizer(model, cfg.optim)
    s = _Setup(cfg=cfg, run_dir=run_dir, device=device, dataset=dataset, model=model, optimizer=optimizer,
               par=par, fwd=fwd)
    if resume is not None:
        path, state = resume
        for diff in check_resume(state, cfg, str(path)):
            log(f"note: resuming {path} with a changed setting, {diff}")
        if sharded:
            par.load_optimizer(path, model, optimizer, state)
        else:
            load_checkpoint(path, model=model, optimizer=optimizer, restore_rng=True, state=state)
        s.start_step, s.data_position = int(state["step"]), int(state["data_position"])
        s.loss_sum, s.loss_count = float(state["loss_sum"]), int(state["loss_count"])
        if par.is_main:
            MetricsLog(run_dir).truncate_after(s.start_step)
        log(f"resumed from {path} (step {s.start_step})")
        if s.start_step >= cfg.train.steps:
            log(f"note: train.steps is {cfg.train.steps} and the checkpoint is at step {s.start_step}: "
                "nothing to train")
    elif par.is_main:  # a fresh start: rows an earlier run left (no valid checkpoint of it remains) are not this run's
        MetricsLog(run_dir).truncate_after(0)
    par.reseed(cfg.train.seed, s.start_step)
    if par.is_main:
        atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
        atomic_write_text(saved_tok, json.dumps(dataset.tokenizer.to_dict(), ensure_ascii=False))
    n_params = sum(p.numel() for p in model.parameters())
    where = f"{device} x {par.world} processes ({par.mode})" if par.active else str(device)
    log(f"run directory {run_dir}; {n_params:,} parameters on {where}, {cfg.train.precision}")
    return s


def _update(s: _Setup, fwd: nn.Module, batches: list[Batch], lr: float) -> tuple[float, float, int]:
    """One optimizer update over ``batches``: (mean loss per target token, gradient norm, target tokens)."""
    cfg, pad = s.cfg, s.dataset.tokenizer.pad_id
    for g in s.optimizer.param_groups:
        g["lr"] = lr
    batches = [b.to(s.device) for b in batches]
    total = sum(int((b.targets != pad).sum()) for b in batches)
    if s.par.active:  # every rank divides by the global token count (see distributed.py)
        total = int(s.par.sum([total])[0])
    if total == 0:
        raise ValueError("a training batch has no target token (every target is padding)")
    s.optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for i, b in enumerate(batches):
        with s.par.no_sync(last=i == len(batches) - 1):
            with autocast_context(s.device, cfg.train.precision):
                logits = forward(fwd, b, s.dataset.model_kind)
            loss = token_loss(logits, b.targets, pad_id=pad, label_smoothing=cfg.optim.label_smoothing)
            (loss * s.par.world / total).backward()  # DDP/FSDP average gradients over ranks: undo the mean
        loss_sum += float(loss.detach())
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    grad_norm = s.par.clip_grad_norm(s.model, clip)
    if s.par.active:  # the global loss, so that every rank takes the same decision below
        loss_sum = s.par.sum([loss_sum])[0]
    if not is_finite_step(loss_sum, grad_norm):  # never apply a NaN/inf update (see faults.py)
        s.optimizer.zero_grad(set_to_none=True)
        return loss_sum / total, grad_norm, total
    s.optimizer.step()
    return loss_sum / total, grad_norm, total


def evaluate_sets(
    model: nn.Module, dataset: Dataset, *, device: torch.device, precision: str, par: Parallel | None = None,
    on_result: Callable[[str, EvalResult], None] | None = None,
) -> dict[str, EvalResult]:
    """Every evaluation set of ``dataset`` (plus its ``extra_metrics``, e.g. BLEU, when it has them); under
    ``torchrun`` each rank scores a shard and the sums are reduced over ranks. ``on_result(name, result)`` is
    called as each set is done, so that the sets scored before one that fails are not lost."""
    out = {}
    for name in dataset.eval_names():
        if par is not None and par.active:
            res = evaluate_sharded(model, dataset.eval_batches(name), model_kind=dataset.model_kind,
                                   pad_id=dataset.tokenizer.pad_id, device=device, precision=precision, par=par)
        else:
            res = evaluate(model, dataset.eval_batches(name), model_kind=dataset.model_kind,
                           pad_id=dataset.tokenizer.pad_id, device=device, precision=precision)
        extra = getattr(dataset, "extra_metrics", None)
        if extra is not None:
            res.extra.update(extra(model, name, device=device, autocast=autocast_context(device, precision)))
        out[name] = res
        if on_result is not None:
            on_result(name, res)
    return out


def _eval_and_log(
    s: _Setup, step: int, mlog: MetricsLog | SilentLog, elapsed: float, cpu: float
) -> dict[str, EvalResult]:
    def log(name: str, res: EvalResult) -> None:
        mlog.log(step, name, {**res.row(), "elapsed_s": round(elapsed, 3), "cpu_s": round(cpu, 3)})
        mlog.log_lengths(step, name, res.per_length)

    with memory_guard(step, s.run_dir):
        return evaluate_sets(s.model, s.dataset, device=s.device, precision=s.cfg.train.precision, par=s.par,
                             on_result=log)


def _eval_keeping_weights(
    s: _Setup, step: int, mlog: MetricsLog | SilentLog, elapsed: float, cpu: float
) -> dict[str, EvalResult]:
    """:func:`_eval_and_log`; if the evaluation fails (an encoding's table too short for a test length, say), this
    step's checkpoint is written first, so that the trained weights outlive the error (single process only: under
    ``torchrun`` the other ranks may still be evaluating)."""
    try:
        return _eval_and_log(s, step, mlog, elapsed, cpu)
    except TrainingError:
        raise  # out of memory or disk space: a checkpoint would fail too, and the message names the intact one
    except Exception:
        if not s.par.active:
            _checkpoint(s, step)
        raise


def _checkpoint(s: _Setup, step: int) -> None:
    """Rank 0 writes the full state (gathered first under FSDP); the others wait for it."""
    model, optimizer = s.par.full_state(s.model, s.optimizer)
    if s.par.is_main:
        _save(s, step, model, optimizer)
    s.par.barrier()


def _save(s: _Setup, step: int, model: Any, optimizer: Any) -> None:
    if isinstance(model, nn.Module):
        check_finite_weights(model, step=step, run_dir=s.run_dir)
    else:  # FSDP: the gathered full state (only rank 0 holds it)
        for name, t in model.state_dict().items():
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteLossError(f"step {step}: parameter {name} holds NaN or inf; not writing a checkpoint; "
                                         f"{last_checkpoint_note(s.run_dir)}")
    try:
        with memory_guard(step, s.run_dir):
            save_checkpoint(s.run_dir, step=step, model=model, optimizer=optimizer,
                            keep=s.cfg.train.keep_checkpoints,
                            state={"data_position": s.data_position, "loss_sum": s.loss_sum, "loss_count": s.loss_count,
                                   "model_config": dataclasses.asdict(s.cfg.model), "model_kind": s.dataset.model_kind,
                                   "tokenizer_fingerprint": s.dataset.tokenizer.fingerprint(),
                                   "vocab_size": s.dataset.tokenizer.vocab_size, "run_signature": run_signature(s.cfg),
                                   "optim_config": dataclasses.asdict(s.cfg.optim)})
    except OSError as err:
        raise TrainingError(f"step {step}: could not write the checkpoint ({err}); "
                            f"{last_checkpoint_note(s.run_dir)}") from err


def _nonfinite(s: _Setup, step: int, loss: float, gnorm: float, log: Callable[[str], None]) -> None:
    """A step with a NaN/inf loss or gradient norm (not applied): stop, or log the skip (``train.nonfinite``)."""
    what = f"step {step}: loss {loss} and gradient norm {gnorm}, not finite; the update was not applied"
    if s.cfg.train.nonfinite == "stop":
        raise NonFiniteLossError(f"{what}; {last_checkpoint_note(s.run_dir)} (train.nonfinite = 'skip' skips "
                                 "such steps instead)")
    log(f"{what}; skipped (train.nonfinite = 'skip')")


def _progress(cfg: RunConfig, start: int, main: bool = True) -> tqdm:
    show = main and (cfg.train.progress == "on" or (cfg.train.progress == "auto" and sys.stderr.isatty()))
    return tqdm(total=cfg.train.steps, initial=start, disable=not show, dynamic_ncols=True, unit="step")


def train(cfg: RunConfig, *, on_step: StepCallback | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) the run ``cfg`` describes; evaluate every ``eval.every`` steps and at the end.

    Under ``torchrun`` every process calls this; see ``distributed.py`` for what each rank does."""
    check_run_config(cfg)
    par, device = Parallel.start(mode=cfg.train.parallel, timeout_s=cfg.train.dist_timeout,
                                 device=resolve_device(cfg.train.device))
    with par.explain_failures():
        result = _train(cfg, on_step, par.main_only(log), par, device)
    par.close()
    return result


def _train(cfg: RunConfig, on_step: StepCallback | None, log: Callable[[str], None], par: Parallel,
           device: torch.device) -> TrainResult:
    if par.active and cfg.data.kind in ("task", "text"):
        check_global_batch(cfg.data.batch_size, par.world)
    s = _setup(cfg, log, par, device)
    fwd = s.fwd if s.fwd is not None else s.model
    fwd = torch.compile(fwd) if cfg.train.compile else fwd
    schedule = build_schedule(cfg.optim, d_model=cfg.model.d_model, total_steps=cfg.train.steps)
    mlog = MetricsLog(s.run_dir, tensorboard=cfg.train.tensorboard) if par.is_main else SilentLog()
    stream: Iterator[Batch] = iter(s.dataset.train_batches(s.data_position))
    draw = (lambda: shard_batch(next(stream), rank=par.rank, world=par.world)) if par.active else \
        (lambda: next(stream))
    bar, step, evals = _progress(cfg, s.start_step, par.is_main), s.start_step, {}
    t0, c0 = time.perf_counter(), time.process_time()
    s.model.train()
    try:
        while step < cfg.train.steps:
            step += 1
            lr = schedule(step)
            with memory_guard(step, s.run_dir):
                loss, gnorm, tokens = _update(s, fwd, [draw() for _ in range(cfg.train.grad_accum)], lr)
            s.data_position += cfg.train.grad_accum
            if is_finite_step(loss, gnorm):
                s.loss_sum, s.loss_count = s.loss_sum + loss, s.loss_count + 1
            else:
                _nonfinite(s, step, loss, gnorm, log)
            elapsed = time.perf_counter() - t0
            spent = elapsed if cfg.train.time_limit_clock == "wall" else time.process_time() - c0
            out_of_time = cfg.train.time_limit > 0 and spent >= cfg.train.time_limit
            if par.active and cfg.train.time_limit > 0:  # every rank stops at the same step, or the rest would hang
                out_of_time = par.sum([float(out_of_time)])[0] > 0
            last = step == cfg.train.steps or out_of_time
            if step % cfg.train.log_every == 0 or last:
                mean = s.loss_sum / s.loss_count if s.loss_count else math.nan  # nan: every step skipped
                mlog.log(step, "train", {"loss": mean, "ppl": math.exp(min(mean, 700.0)), "lr": lr,
                                         "grad_norm": gnorm, "tokens": tokens, "elapsed_s": round(elapsed, 3),
                                         "cpu_s": round(time.process_time() - c0, 3)})
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                s.loss_sum, s.loss_count = 0.0, 0
            if last or (cfg.eval.every > 0 and step % cfg.eval.every == 0):
                evals = _eval_keeping_weights(s, step, mlog, elapsed, time.process_time() - c0)
            if last or step % cfg.train.checkpoint_every == 0:
                _checkpoint(s, step)
            bar.update(1)
            if on_step is not None:
                on_step(step, {"loss": loss, "lr": lr, "grad_norm": gnorm})
            if out_of_time:
                log(f"stopping at step {step}: time limit of {cfg.train.time_limit:g} s "
                    f"({cfg.train.time_limit_clock} clock) reached")
                break
    finally:
        bar.close()
        mlog.close()
    if not evals:  # the run was already complete: evaluate what the checkpoint holds
        evals = evaluate_sets(s.model, s.dataset, device=s.device, precision=cfg.train.precision, par=par)
    if par.is_main:
        _write_results(s.run_dir, step, evals)
    return TrainResult(run_dir=s.run_dir, step=step, evals=evals)


def _write_results(run_dir: pathlib.Path, step: int, evals: dict[str, EvalResult]) -> None:
    doc = {"step": step, "evals": {n: {**r.row(), "sequences": r.sequences,
                                       "exact_match_per_length": {str(k): v[1] / v[0] for k, v in r.per_length.items()}}
                                   for n, r in evals.items()}}
    atomic_write_text(run_dir / "results.json", json.dumps(doc, indent=1) + "\n")


def format_results(evals: dict[str, EvalResult]) -> str:
    """A small table: one line per evaluation set, then exact match by length where the data has lengths."""
    lines = [f"{'set':14s} {'loss':>8s} {'ppl':>9s} {'token acc':>9s} {'exact':>7s}"]
    for name, r in evals.items():
        extra = "".join(f"  {k} {v:.2f}" for k, v in r.extra.items() if isinstance(v, float))
        lines.append(f"{name:14s} {r.loss:8.4f} {r.ppl:9.3f} {r.token_acc:9.2%} {r.exact_match:7.1%}{extra}")
    for name, r in evals.items():
        if r.per_length:
            cells = " ".join(f"{n}:{ok / c:.0%}" for n, (c, ok) in r.per_length.items())
            lines.append(f"exact match by length ({name}): {cells}")
    return "\n".join(lines)
