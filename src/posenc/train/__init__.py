"""Training: typed configs, the loop, optimizers and schedules, checkpoints, metrics, and ``load_run``.

    from posenc.train import RunConfig, train, load_run
    result = train(RunConfig())                 # the built-in copy task, decoder-only, NoPE
    model, tokenizer, cfg = load_run(result.run_dir)
"""

from __future__ import annotations

from .config import RunConfig
from .loop import TrainResult, train
from .run import build_dataset, build_model, load_run

__all__ = ["RunConfig", "TrainResult", "build_dataset", "build_model", "load_run", "train"]
