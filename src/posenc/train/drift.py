"""Config drift on resume: a checkpoint continues only the run it came from.

A resumed run is bit-identical to an uninterrupted one only if it sees the same batches in the same order. Batch
``k`` is a pure function of the data settings, the seed and the gradient accumulation (not of the number of
processes: ``data.batch_size`` is the global batch, which ranks split among themselves; see ``distributed.py``,
so a run resumes on another world size), so each checkpoint records these (``run_signature``) and :func:`check_resume` refuses a resume
under different ones, listing every difference. The model and tokenizer are checked by
``posenc.train.run.check_compatible``. Optimizer settings may change on purpose (a lower rate to finish a run),
so their differences are only reported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .checkpoint import CheckpointError
from .config import RunConfig

__all__ = ["check_resume", "data_differences", "run_signature", "world_size"]


def world_size() -> int:
    """The number of training processes (1 unless ``torch.distributed`` is initialized)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def run_signature(cfg: RunConfig) -> dict[str, Any]:
    """What fixes the batch stream: the data section, the seed, gradient accumulation and the world size."""
    return {"data": dataclasses.asdict(cfg.data), "train.seed": cfg.train.seed,
            "train.grad_accum": cfg.train.grad_accum}


def _flat(sig: dict[str, Any]) -> dict[str, Any]:
    out = {f"data.{k}": v for k, v in sig.get("data", {}).items()}
    out.update({k: v for k, v in sig.items() if k != "data"})
    return out


def data_differences(state: dict[str, Any], cfg: RunConfig) -> list[str]:
    """The data settings (and seed, accumulation) in which a checkpoint's run differs from ``cfg``, one line each;
    empty for a checkpoint without a recorded signature (an older format)."""
    saved = state.get("run_signature")
    if saved is None:
        return []
    old, new = _flat(saved), _flat(run_signature(cfg))
    # a setting added or dropped since is not compared (older checkpoints recorded world_size, which no longer
    # changes the batch stream)
    return [f"{k}: checkpoint {old.get(k)!r}, this run {new.get(k)!r}"
            for k in sorted(old) if k in new and old[k] != new[k]]


def check_resume(state: dict[str, Any], cfg: RunConfig, where: str) -> list[str]:
    """Refuse (``CheckpointError``) a resume whose batch stream would differ; return optimizer differences.

    A checkpoint without a recorded signature (an older format) is not checked, nor is a setting added to the
    config after the checkpoint was written (its default cannot have been recorded).
    """
    diffs = data_differences(state, cfg)
    if diffs:
        raise CheckpointError(f"checkpoint {where} belongs to a run with other data settings; resuming it would "
                              f"mix two runs: " + "; ".join(diffs) + ". Use another --run-dir for a new run")
    optim = state.get("optim_config")
    if optim is None:
        return []
    now = dataclasses.asdict(cfg.optim)
    return [f"optim.{k}: checkpoint {optim.get(k)!r}, this run {now.get(k)!r}"
            for k in sorted(optim) if optim[k] != now.get(k)]
