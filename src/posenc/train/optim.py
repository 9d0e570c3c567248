"""Optimizers (Adam, AdamW) and learning-rate schedules as pure functions of the step.

A schedule is a function ``step -> lr`` of the 1-based update number; the trainer writes it into the optimizer's
parameter groups before every update. Being a pure function of the step, it needs no state of its own in a
checkpoint: the step restores it.

* ``noam`` -- Vaswani et al. (2017), eq. 3: ``lr · d_model^-0.5 · min(s^-0.5, s · warmup^-1.5)``, a linear
  warm-up then inverse-square-root decay (``lr = 1`` is the paper's rate; d=512, warmup=4000 gives
  1.747e-7 at step 1 and the peak 6.988e-4 at step 4000);
* ``cosine`` -- a linear warm-up to ``lr``, then a half cosine down to ``min_lr_ratio · lr`` at the last step
  (Loshchilov & Hutter 2017, without restarts);
* ``constant`` -- ``lr`` after an optional linear warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import check_positive_number
from .config import OptimConfig

__all__ = ["build_optimizer", "build_schedule", "constant", "noam", "parameter_order", "warmup_cosine"]

Schedule = Callable[[int], float]


def _check_step(step: int) -> None:
    if step < 1:
        raise ValueError(f"schedules are defined for steps >= 1 (the first update is step 1), got {step}")


def noam(step: int, *, d_model: int, warmup: int, scale: float = 1.0) -> float:
    _check_step(step)
    if warmup < 1:
        raise ValueError(f"the noam schedule needs warmup >= 1, got {warmup}")
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def warmup_cosine(step: int, *, peak: float, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    _check_step(step)
    if warmup > 0 and step <= warmup:
        return peak * step / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(step: int, *, peak: float, warmup: int = 0) -> float:
    _check_step(step)
    return peak * step / warmup if warmup > 0 and step < warmup else peak


def build_schedule(cfg: OptimConfig, *, d_model: int, total_steps: int) -> Schedule:
    if cfg.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.schedule == "noam":
        return lambda s: noam(s, d_model=d_model, warmup=max(cfg.warmup_steps, 1), scale=cfg.lr)
    if cfg.schedule == "cosine":
        return lambda s: warmup_cosine(s, peak=cfg.lr, warmup=cfg.warmup_steps, total=total_steps,
                                       min_ratio=cfg.min_lr_ratio)
    if cfg.schedule == "constant":
        return lambda s: constant(s, peak=cfg.lr, warmup=cfg.warmup_steps)
    raise ValueError(f"optim.schedule must be one of 'noam', 'cosine', 'constant'; got {cfg.schedule!r}")


def _param_groups(model: nn.Module, name: str) -> list[list[nn.Parameter]]:
    """The parameter groups of optimizer ``name``: Adam one group; AdamW the matrices (decayed), then the rest."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a tied tensor once
    if name == "adam":
        return [params]
    if name == "adamw":
        return [[p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]]
    raise ValueError(f"optim.name must be 'adam' or 'adamw', got {name!r}")


def parameter_order(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters in the order in which an optimizer ``name`` from :func:`build_optimizer` numbers them in its
    state dict: what a checkpoint's optimizer state refers to by number."""
    return [p for group in _param_groups(model, name) for p in group]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW. AdamW decays matrices only: biases, norms' gains and 1-D tables are left alone (the usual
    practice since BERT and GPT-2, so that a norm's scale is not pulled toward zero)."""
    check_positive_number("optim.lr", cfg.lr)
    groups = _param_groups(model, cfg.name)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "adam":
        return torch.optim.Adam(groups[0], lr=cfg.lr, betas=betas, eps=cfg.eps)
    decay, rest = groups
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=betas, eps=cfg.eps)
