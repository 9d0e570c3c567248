from __future__ import annotations

import math

import pytest
import torch

from posenc.train.config import OptimConfig
from posenc.train.optim import build_optimizer, build_schedule, constant, noam, warmup_cosine


def test_noam_paper_test_vectors() -> None:
    # Vaswani et al. (2017) eq. 3 with d_model=512, warmup=4000
    assert noam(1, d_model=512, warmup=4000) == pytest.approx(1.747e-7, rel=1e-3)
    assert noam(4000, d_model=512, warmup=4000) == pytest.approx(6.988e-4, rel=1e-3)
    assert noam(100000, d_model=512, warmup=4000) == pytest.approx(1.398e-4, rel=1e-3)
    peak = noam(4000, d_model=512, warmup=4000)
    assert noam(3999, d_model=512, warmup=4000) < peak and noam(4001, d_model=512, warmup=4000) < peak
    sched = build_schedule(OptimConfig(schedule="noam", lr=2.0, warmup_steps=4000), d_model=512, total_steps=10)
    assert sched(4000) == pytest.approx(2 * 6.988e-4, rel=1e-3)


def test_warmup_cosine() -> None:
    f = lambda s: warmup_cosine(s, peak=1.0, warmup=10, total=110, min_ratio=0.1)  # noqa: E731
    assert f(1) == pytest.approx(0.1) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_constant_with_warmup() -> None:
    assert constant(1, peak=0.5, warmup=4) == pytest.approx(0.125)
    assert constant(4, peak=0.5, warmup=4) == 0.5 and constant(99, peak=0.5) == 0.5
    with pytest.raises(ValueError, match="steps >= 1"):
        constant(0, peak=1.0)


def test_bad_names() -> None:
    with pytest.raises(ValueError, match="'linear'"):
        build_schedule(OptimConfig(schedule="linear"), d_model=8, total_steps=1)
    with pytest.raises(ValueError, match="'sgd'"):
        build_optimizer(torch.nn.Linear(2, 2), OptimConfig(name="sgd"))
    for lr in (0.0, float("nan"), float("inf")):  # built in Python without the run's checks: refused here too
        with pytest.raises(ValueError, match=f"optim.lr must be a finite number > 0, got {lr}"):
            build_optimizer(torch.nn.Linear(2, 2), OptimConfig(lr=lr))


def test_adamw_decays_matrices_only() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.98) and opt.param_groups[0]["eps"] == 1e-9


def test_tied_parameters_are_optimized_once() -> None:
    emb = torch.nn.Embedding(5, 4)
    head = torch.nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    opt = build_optimizer(torch.nn.ModuleList([emb, head]), OptimConfig(name="adam"))
    assert sum(len(g["params"]) for g in opt.param_groups) == 1
    assert math.isclose(opt.param_groups[0]["lr"], 3e-3)
