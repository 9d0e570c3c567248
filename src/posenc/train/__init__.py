"""Training: configs, the loop, optimizers and schedules, checkpoints, evaluation metrics."""
