"""Training on several processes or machines with PyTorch's own engine: DDP by default, FSDP2 on request.

Launch with ``torchrun`` (``python -m torch.distributed.run``); the rank, local rank and world size come from
its environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). Without them, ``Parallel`` is a single process and
every method is the identity, so a plain ``posenc train`` behaves exactly as before.

* Backend: NCCL when the run's device is CUDA (each process takes ``cuda:LOCAL_RANK``), gloo otherwise. The
  process group's timeout is ``train.dist_timeout`` seconds, so a rank blocked on a dead peer fails with an
  error instead of hanging; torchrun then stops the other ranks (and restarts them with ``--max-restarts``).
* Data: ``data.batch_size`` is the *global* batch of one accumulation step, whatever the world size. Every
  rank draws the same global batch ``k`` from ``(seed, k)`` and keeps rows ``rank, rank + W, ...``: distinct
  shards whose union is exactly the one-process batch.
* Loss: each rank sums its targets' cross-entropy and divides by the *global* count of target tokens (an
  ``all_reduce``); DDP and FSDP average gradients over ranks, so the loss is multiplied by ``W`` first, and the
  gradient equals the one-process gradient up to floating-point summation order.
* Models: ``ddp`` wraps the model in ``DistributedDataParallel``; ``fsdp`` applies ``fully_shard`` (FSDP2,
  Zhao et al. 2023) to every Transformer layer and then to the whole model, so each rank stores ``1/W`` of the
  weights, gradients and optimizer state.
* Checkpoints: gathered to a full state on rank 0 (``get_model_state_dict`` / ``get_optimizer_state_dict``
  with ``full_state_dict=True, cpu_offload=True`` under FSDP) and written in the one-process format, so a
  checkpoint from N processes resumes on M processes or on one.
* Evaluation: each rank scores rows ``rank, rank + W, ...`` of every evaluation batch; sums of losses, tokens,
  correct tokens and exact sequences (per length too) are ``all_reduce``-d, never a mean of means.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .._checks import check_positive_number
from ..data.batch import Batch
from .metrics import EvalResult, autocast_context, forward, token_loss

__all__ = ["PARALLEL_MODES", "Parallel", "SilentLog", "check_global_batch", "evaluate_sharded", "shard_batch"]

PARALLEL_MODES = ("ddp", "fsdp")


def check_global_batch(batch_size: int, world: int) -> None:
    """A fixed global batch (tasks, text) must split evenly: a ``ValueError`` naming both numbers otherwise."""
    if batch_size % world:
        raise ValueError(f"data.batch_size {batch_size} (the global batch) does not divide among {world} processes; "
                         f"use a multiple of {world}")


def shard_batch(batch: Batch, *, rank: int, world: int) -> Batch:
    """Rows ``rank, rank + world, ...`` of a global batch. Token-bucketed batches (translation) vary in rows and
    may split unevenly, which is still exact (the loss is divided by the global token count); a batch with fewer
    rows than processes is a ``ValueError``, since a rank would have nothing to train on."""
    if batch.size < world:
        raise ValueError(f"a global batch of {batch.size} rows cannot feed {world} processes; "
                         "use larger batches (data.batch_size or data.max_tokens)")
    return _rows(batch, slice(rank, None, world))


def _rows(batch: Batch, index: slice) -> Batch:
    return Batch(inputs=batch.inputs[index], targets=batch.targets[index],
                 src=None if batch.src is None else batch.src[index],
                 lengths=None if batch.lengths is None else batch.lengths[index])


def _eval_shard(batch: Batch, *, rank: int, world: int, pad_id: int) -> Batch:
    """This rank's rows of an evaluation batch. A rank left without a row scores one row whose targets are all
    padding: it still runs the forward pass (FSDP needs every rank in every all-gather) but counts nothing."""
    part = _rows(batch, slice(rank, None, world))
    if part.size > 0:
        return part
    dummy = _rows(batch, slice(0, 1))
    return Batch(inputs=dummy.inputs, targets=torch.full_like(dummy.targets, pad_id), src=dummy.src,
                 lengths=dummy.lengths)


@dataclass
class Parallel:
    """This process's place in the job. ``world == 1`` (no torchrun) makes every method the identity."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    mode: str = "ddp"
    owns_group: bool = False
    ddp: nn.Module | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, *, mode: str, timeout_s: float, device: torch.device) -> tuple[Parallel, torch.device]:
        """Join torchrun's job when its environment says there is one; returns the process and its device."""
        if mode not in PARALLEL_MODES:
            raise ValueError(f"train.parallel must be one of {', '.join(PARALLEL_MODES)}, got {mode!r}")
        check_positive_number("train.dist_timeout (seconds)", timeout_s)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(mode=mode), device
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local if device.index is None else device.index)
            torch.cuda.set_device(device)
        owns = not dist.is_initialized()
        if owns:
            _init_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world=world,
                        timeout=datetime.timedelta(seconds=timeout_s))
        return cls(rank=rank, local_rank=local, world=world, mode=mode, owns_group=owns), device

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    @contextlib.contextmanager
    def explain_failures(self) -> Iterator[None]:
        """Say on stderr which rank stopped and why a peer's failure ends the job, then re-raise."""
        try:
            yield
        except RuntimeError as err:  # gloo/NCCL errors (a peer closed its connection, a collective timed out)
            if self.active:
                print(f"posenc: rank {self.rank} of {self.world} stopped: {type(err).__name__}: {err}\n"
                      "posenc: another process probably died or stalled (a collective waits at most "
                      "train.dist_timeout seconds); torchrun stops the job, and a relaunch (or torchrun "
                      "--max-restarts) resumes from the newest valid checkpoint", file=sys.stderr, flush=True)
            raise

    def main_only(self, log: Callable[[str], None]) -> Callable[[str], None]:
        return log if self.is_main else (lambda _msg: None)

    def reseed(self, seed: int, step: int) -> None:
        """Distinct dropout streams per rank (one process keeps its stream untouched)."""
        if self.active:
            torch.manual_seed(hash((seed, step, self.rank)) % (2**63))

    # -- model and optimizer -------------------------------------------------------------------------------
    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to call for training: ``model`` itself, its DDP wrapper, or (FSDP) ``model`` sharded in
        place."""
        if not self.active:
            return model
        if self.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            from ..layers import DecoderLayer, EncoderLayer

            for m in list(model.modules()):
                if isinstance(m, (EncoderLayer, DecoderLayer)):
                    fully_shard(m)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return self.ddp

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip DDP's gradient all-reduce on every micro-batch of an update but the last."""
        if self.ddp is not None and not last:
            return self.ddp.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, clip: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if hasattr(norm, "full_tensor"):  # FSDP: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    # -- reductions ------------------------------------------------------------------------------------------
    def sum(self, values: Iterable[float], *, dtype: torch.dtype = torch.float64) -> list[float]:
        vals = list(values)
        if not self.active:
            return vals
        t = torch.tensor(vals, dtype=dtype, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    # -- checkpoints -----------------------------------------------------------------------------------------
    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """Objects whose ``state_dict()`` is the full, one-process state: what ``save_checkpoint`` writes.
        Collective under FSDP (every rank must call it); only rank 0's result holds tensors."""
        if not (self.active and self.mode == "fsdp"):
            return model, optimizer
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, optimizer, options=opts)
        if not self.is_main:
            return None, None
        msd = {k: v.detach().clone() for k, v in msd.items()}  # own, exact storages (gathered ones may be views)
        for alias, canonical in _tied_names(model).items():  # one storage, as save_model expects of a tie
            msd[alias] = msd[canonical]
        names = _param_names(model, optimizer)
        index = {n: i for i, n in enumerate(names)}
        state = {index[n]: v for n, v in osd["state"].items()}
        groups = [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]
        return _StateView(msd, model), _StateView({"state": state, "param_groups": groups})

    def load_optimizer(self, path: pathlib.Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       doc: dict[str, Any]) -> None:
        """Load a full (one-process) optimizer state into an FSDP-sharded optimizer."""
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        from .checkpoint import fitted_optimizer_state

        full = fitted_optimizer_state(load_file(str(path / "trainer.safetensors")), doc, model, optimizer)
        names = _param_names(model, optimizer)
        osd = {"state": {names[i]: v for i, v in full["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in full["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))


def _init_group(*, backend: str, rank: int, world: int, timeout: datetime.timedelta) -> None:
    """``init_process_group`` on torchrun's store, under a prefix of the restart number: after a
    ``--max-restarts`` restart the store still holds the dead attempt's addresses, and gloo would try them."""
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"posenc/attempt{attempt}/", store), rank=rank,
                            world_size=world, timeout=timeout)


@dataclass
class _StateView:
    """Stands in for a module or optimizer where only ``state_dict()`` is read (``save_checkpoint``); a model's
    view keeps the module, whose own generators (``randomized``'s sampler) the checkpoint saves too."""

    sd: dict[str, Any]
    module: nn.Module | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.sd


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's positional order (the ids of ``optimizer.state_dict()``)."""
    by_id = {}
    for name, p in model.named_parameters():
        by_id.setdefault(id(p), name)
    return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _tied_names(model: nn.Module) -> dict[str, str]:
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


@torch.no_grad()
def evaluate_sharded(
    model: nn.Module, batches: Iterator[Batch], *, model_kind: str, pad_id: int, device: torch.device,
    precision: str, par: Parallel,
) -> EvalResult:
    """``metrics.evaluate`` over this rank's rows of every batch, with the sums reduced over all ranks."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # loss, tokens, correct, sequences, exact
    per_length: dict[int, list[int]] = {}
    try:
        for batch in batches:
            b = _eval_shard(batch, rank=par.rank, world=par.world, pad_id=pad_id).to(device)
            with autocast_context(device, precision):
                logits = forward(model, b, model_kind)  # (B, T, V)
            real = b.targets != pad_id  # (B, T)
            hit = (logits.argmax(-1) == b.targets) & real  # (B, T)
            has = real.any(dim=1)  # (B,)
            seq_ok = (hit | ~real).all(dim=1) & has  # (B,)
            sums += torch.tensor([float(token_loss(logits, b.targets, pad_id=pad_id)), int(real.sum()),
                                  int(hit.sum()), int(has.sum()), int(seq_ok.sum())], dtype=torch.float64)
            if b.lengths is not None:
                for n, ok, counted in zip(b.lengths.tolist(), seq_ok.tolist(), has.tolist()):
                    if counted:
                        c = per_length.setdefault(int(n), [0, 0])
                        c[0], c[1] = c[0] + 1, c[1] + int(ok)
    finally:
        model.train(was_training)
    loss, tokens, correct, seqs, exact = par.sum(sums.tolist())
    per_length = _reduce_lengths(per_length, par)
    if tokens == 0:
        raise ValueError("the evaluation set has no target token to score")
    return EvalResult(loss=loss / tokens, token_acc=correct / tokens, exact_match=exact / max(seqs, 1),
                      tokens=int(tokens), sequences=int(seqs), per_length=per_length)


def _reduce_lengths(counts: dict[int, list[int]], par: Parallel) -> dict[int, tuple[int, int]]:
    """Per-length (sequences, exact) summed over ranks: a dense table up to the longest length any rank saw."""
    longest = _max(counts, par) if par.active else max(counts, default=-1)
    table = torch.zeros(int(longest) + 1, 2, dtype=torch.int64)
    for n, (c, ok) in counts.items():
        table[n] = torch.tensor([c, ok])
    if par.active:
        table = table.to(par._comm_device())
        dist.all_reduce(table)
        table = table.cpu()
    return {n: (int(c), int(ok)) for n, (c, ok) in enumerate(table.tolist()) if c > 0}


def _max(counts: dict[int, list[int]], par: Parallel) -> int:
    t = torch.tensor([max(counts, default=-1)], dtype=torch.int64, device=par._comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class SilentLog:
    """The metrics log of a rank other than 0: accepts every row, writes nothing."""

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        pass

    def log_lengths(self, step: int, split: str, per_length: dict[int, tuple[int, int]]) -> None:
        pass

    def close(self) -> None:
        pass
