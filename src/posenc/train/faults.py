"""What the trainer does when a step goes wrong: a non-finite loss, memory running out, a full disk.

The rule is the same for every fault: stop with a message that names the step and the last checkpoint that is
still intact, and never overwrite that checkpoint with a bad one. A run that stopped this way resumes from there
(``--resume auto``).

Non-finite losses (``train.nonfinite``):

* ``"stop"`` (the default): a step whose loss or gradient norm is NaN or infinite raises
  :class:`NonFiniteLossError` *before* the optimizer steps, so the weights in memory and on disk are the last
  finite ones. Mixed-precision practice (Micikevicius et al. 2018, "Mixed Precision Training", sec. 3.3) skips
  such steps silently; we stop by default because a diverging fp32 run is a bug to look at, not noise.
* ``"skip"``: the step's gradients are dropped and the optimizer does not step (weights and optimizer state stay
  exactly as they were); the batch counts as consumed, so the data stream and a resume stay reproducible. Each
  skip is logged.

A checkpoint is written only when every weight is finite (:func:`check_finite_weights`), so even a fault that
slips past the loss check (say, an update that overflows a weight) cannot replace a good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
from collections.abc import Iterator

import torch
from torch import nn

from .checkpoint import checkpoint_dirs

__all__ = [
    "NONFINITE_POLICIES", "NonFiniteLossError", "TrainingError", "check_finite_weights", "is_finite_step",
    "last_checkpoint_note", "memory_guard",
]

NONFINITE_POLICIES: tuple[str, ...] = ("stop", "skip")


class TrainingError(RuntimeError):
    """A run that had to stop; the message names the step and the last intact checkpoint."""


class NonFiniteLossError(TrainingError):
    """A NaN or infinite loss (or gradient norm) under ``train.nonfinite = "stop"``."""


def last_checkpoint_note(run_dir: str | pathlib.Path) -> str:
    """``"the last checkpoint, <dir> (step N), is intact"`` -- or that there is none yet."""
    found = checkpoint_dirs(run_dir)
    if not found:
        return f"no checkpoint has been written to {pathlib.Path(run_dir) / 'checkpoints'} yet"
    last = found[-1]
    return f"the last checkpoint, {last} (step {int(last.name.split('_')[1])}), is intact; resume with --resume auto"


def is_finite_step(loss: float, grad_norm: float) -> bool:
    """Whether an update may be applied: both its loss and its gradient norm are finite."""
    return math.isfinite(loss) and math.isfinite(grad_norm)


def check_finite_weights(model: nn.Module, *, step: int, run_dir: str | pathlib.Path) -> None:
    """Refuse to checkpoint weights that hold NaN or inf (``NonFiniteLossError`` naming the first such tensor)."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise NonFiniteLossError(f"step {step}: parameter {name} holds NaN or inf; not writing a checkpoint; "
                                     f"{last_checkpoint_note(run_dir)}")


def _address_space_nearly_full(margin: int = 256 << 20) -> bool:
    """Whether this process's address space lies within ``margin`` bytes of its ``RLIMIT_AS`` (Linux; False when
    there is no limit or no way to tell)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return False
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError, ValueError):
        return False
    return size > soft - margin


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    if not isinstance(err, RuntimeError):
        return False
    text = str(err).lower()
    if "can't allocate memory" in text or "out of memory" in text:
        return True
    # oneDNN (CPU matrix products) reports a failed allocation only as a failed primitive; near the limit (closer
    # than one large block) that is what it was
    return "could not create a primitive" in text and _address_space_nearly_full()


@contextlib.contextmanager
def memory_guard(step: int, run_dir: str | pathlib.Path) -> Iterator[None]:
    """Turn an allocation failure inside a step into a ``TrainingError`` naming the step and the last checkpoint."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err) or isinstance(err, TrainingError):
            raise
        raise TrainingError(f"out of memory at step {step} ({type(err).__name__}: {str(err)[:200]}); "
                            f"{last_checkpoint_note(run_dir)}") from err
