"""A checkpoint's optimizer state fitted to this run's optimizer: moments by parameter, hyperparameters from the
run's config (``posenc.train.checkpoint.fitted_optimizer_state``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from posenc.train.checkpoint import CheckpointError, _optimizer_parts, fitted_optimizer_state
from posenc.train.config import OptimConfig
from posenc.train.optim import build_optimizer, parameter_order


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def _stepped(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    opt = build_optimizer(model, cfg)
    for _ in range(2):
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize(("before", "after"), [("adamw", "adamw"), ("adamw", "adam"), ("adam", "adamw")])
def test_moments_follow_their_parameter_and_hyperparameters_the_new_config(before: str, after: str) -> None:
    model = _model()
    old = _stepped(model, OptimConfig(name=before, lr=1e-2, weight_decay=0.1))
    tensors, meta = _optimizer_parts(old)
    doc = {"optimizer": meta, "optim_config": {"name": before}}
    new = build_optimizer(model, OptimConfig(name=after, lr=1e-3, beta1=0.5, beta2=0.9, eps=1e-4, weight_decay=0.3))
    new.load_state_dict(fitted_optimizer_state(tensors, doc, model, new))
    for p in parameter_order(model, after):
        assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"])
        assert torch.equal(new.state[p]["exp_avg_sq"], old.state[p]["exp_avg_sq"])
        assert float(new.state[p]["step"]) == 2.0
    for g in new.param_groups:
        assert (g["lr"], g["betas"], g["eps"]) == (1e-3, (0.5, 0.9), 1e-4)
    assert [g["weight_decay"] for g in new.param_groups] == ([0.3, 0.0] if after == "adamw" else [0.0])


def test_a_checkpoint_of_another_parameter_count_is_refused() -> None:
    model = _model()
    tensors, meta = _optimizer_parts(_stepped(model, OptimConfig(name="adam")))
    other = nn.Linear(3, 4)
    with pytest.raises(CheckpointError, match="holds 6 parameters, this run's optimizer"):
        fitted_optimizer_state(tensors, {"optimizer": meta, "optim_config": {"name": "adam"}}, other,
                               build_optimizer(other, OptimConfig(name="adam")))
