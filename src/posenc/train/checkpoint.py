"""Checkpoints that survive a crash: safetensors + JSON, atomic, verified, the last k kept.

A checkpoint is a directory ``<run>/checkpoints/step_00001500/`` holding

* ``model.safetensors`` -- the weights (``safetensors.torch.save_model``, which stores a tied tensor once);
* ``trainer.safetensors`` -- the optimizer's tensors (``state.<param>.<name>``) and the RNG states
  (``rng.torch``, ``rng.cuda.<i>``, and ``rng.module.<name>`` for each module that draws from a
  ``torch.Generator`` of its own, kept as its ``generator`` attribute: ``randomized``'s position sampler);
* ``state.json`` -- the step, the data position, the optimizer's parameter groups and scalars, the model
  config, the tokenizer fingerprint, the trainer's own counters, the sha256 of both tensor files, and
  ``state_sha256``, the sha256 of its own canonical JSON without that field (so a flipped byte anywhere in a
  checkpoint is detected, not only in the tensor files).

Nothing is pickled; nothing is read with ``torch.load``. Writing is atomic: the files go into a hidden
``.step_00001500.tmp`` directory, each is fsynced, then the directory is renamed to its final name and the parent
fsynced, so a checkpoint has its final name only when complete (one of the same step already there is swapped
out in the same atomic step on Linux). A save that fails (a full disk: ``OSError``)
removes its temporary directory and raises :class:`CheckpointWriteError`; leftovers of a process killed while
saving are never listed and are removed by the next save. A checkpoint whose ``state.json`` is missing or
unreadable, or whose files do not match their recorded hashes, is *invalid*: ``latest_valid`` skips it with a
warning naming it and falls back to the next older one.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import warnings
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

__all__ = [
    "MODULE_RNG_PREFIX", "CheckpointError", "CheckpointWriteError", "atomic_write_text", "checkpoint_dirs",
    "file_sha256", "latest_valid", "load_checkpoint", "module_generator_states", "read_state",
    "restore_module_generators", "save_checkpoint",
]

FORMAT = "posenc-checkpoint/1"
MODULE_RNG_PREFIX = "rng.module."  # the keys of the generators modules own (module_generator_states)
_NAME = re.compile(r"^step_(\d{8,})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (partial, corrupt, or of another configuration)."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (e.g. no space left); the previous ones are untouched."""


def _state_digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _remove_leftovers(root: pathlib.Path) -> None:
    """Delete temporary checkpoint directories of processes that no longer exist (killed while saving)."""
    for p in root.glob(".step_*.tmp*"):
        pid = p.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # that process is alive (another save in progress): leave it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(p, ignore_errors=True)


def _fsync_file(path: pathlib.Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    p = pathlib.Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    _fsync_dir(p.parent)


def file_sha256(path: pathlib.Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _optimizer_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state_dict(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, extra in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(extra)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def fitted_optimizer_state(tensors: dict[str, torch.Tensor], doc: dict[str, Any], model: nn.Module,
                           optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A checkpoint's optimizer state as ``optimizer``'s ``load_state_dict`` takes it: the per-parameter state
    (moments, step counts) from the checkpoint, the hyperparameters (lr, betas, eps, weight decay) from
    ``optimizer``, i.e. from this run's config, so that a resume with changed optimizer settings uses them.

    The checkpoint numbers its parameters in the order of the optimizer that wrote it (``optim_config.name`` in
    ``state.json``); they are matched to ``optimizer``'s by parameter, so Adam and AdamW (one group, or matrices
    then the rest) can follow each other. A checkpoint without ``optim_config`` is taken to number them as
    ``optimizer`` does."""
    from .optim import parameter_order

    saved = _optimizer_state_dict(tensors, doc["optimizer"])
    ours = [p for g in optimizer.param_groups for p in g["params"]]
    name = (doc.get("optim_config") or {}).get("name")
    theirs = ours if name is None else parameter_order(model, name)
    count = sum(len(g["params"]) for g in saved["param_groups"])
    if count != len(ours) or len(theirs) != len(ours):
        raise CheckpointError(f"the checkpoint's optimizer holds {count} parameters, this run's optimizer "
                              f"({name or 'of the same kind'}) {len(ours)}")
    index = {id(p): i for i, p in enumerate(ours)}
    state = {index[id(theirs[int(i)])]: v for i, v in saved["state"].items()}
    groups, start = [], 0
    for g in optimizer.param_groups:
        n = len(g["params"])
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(start, start + n))})
        start += n
    return {"state": state, "param_groups": groups}


def _module_generators(model: Any) -> dict[str, torch.Generator]:
    """The generators modules own (``module.generator``), by module name: their draws are part of a run's state.
    ``model`` is a module or a gathered state's view of one (FSDP), which names its module as ``module``."""
    root = model if isinstance(model, nn.Module) else getattr(model, "module", None)
    if root is None:
        return {}
    return {name: m.generator for name, m in root.named_modules()
            if isinstance(getattr(m, "generator", None), torch.Generator)}


def module_generator_states(model: Any) -> dict[str, torch.Tensor]:
    """``{"rng.module.<name>": state}`` for every generator a module of ``model`` owns (see
    :func:`_module_generators`): what a checkpoint stores so that a resume continues their draws."""
    return {MODULE_RNG_PREFIX + name: gen.get_state() for name, gen in _module_generators(model).items()}


def restore_module_generators(tensors: dict[str, torch.Tensor], model: nn.Module, path: pathlib.Path) -> None:
    """Set every generator a module of ``model`` owns from ``tensors`` (:func:`module_generator_states`); a
    checkpoint written before these states were stored restores the rest, with a warning naming the modules."""
    missing = []
    for name, gen in _module_generators(model).items():
        state = tensors.get(MODULE_RNG_PREFIX + name)
        if state is None:
            missing.append(name or "the model")
        else:
            gen.set_state(state)
    if missing:
        warnings.warn(f"checkpoint {path} holds no state for the generator of {', '.join(missing)}: its draws "
                      "(randomized positions) restart from the seed, so this resume is not bit-identical",
                      stacklevel=3)


def _rng_tensors(model: Any) -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out | module_generator_states(model)


def _restore_rng(tensors: dict[str, torch.Tensor], model: nn.Module, path: pathlib.Path) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    restore_module_generators(tensors, model, path)


def checkpoint_dirs(run_dir: str | os.PathLike[str]) -> list[pathlib.Path]:
    """Finished-looking checkpoint directories of a run, oldest first (temporary ones are never listed)."""
    root = pathlib.Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def save_checkpoint(
    run_dir: str | os.PathLike[str], *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
    state: dict[str, Any], keep: int = 3,
) -> pathlib.Path:
    """Write checkpoint ``step`` atomically, then delete all but ``keep`` (``keep <= 0`` keeps all): this one and
    the newest ``keep - 1`` others (a step below an existing one, after a resume fell back past a corrupt newer
    checkpoint, is never the one deleted).

    ``state`` holds the JSON-able rest: data position, model config, tokenizer fingerprint, counters; a value JSON
    would change (a dict with int keys) is refused, as it could never verify against its recorded digest.
    """
    if json.loads(json.dumps(state)) != state:
        raise ValueError("checkpoint state must survive JSON unchanged (string dict keys, lists not tuples); "
                         f"got {state!r}")
    root = pathlib.Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    try:
        _write(tmp, step=step, model=model, optimizer=optimizer, state=state)
        _put_in_place(tmp, final)
    except BaseException as err:  # a full disk, memory, Ctrl-C: leave no temporary directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, OSError):
            raise
        raise CheckpointWriteError(err.errno, f"could not write checkpoint {final}: {err.strerror or err}") from err
    _fsync_dir(root)
    if keep > 0:
        others = [p for p in checkpoint_dirs(run_dir) if p != final]
        for old in others[: max(len(others) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _put_in_place(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Rename the finished ``tmp`` to ``final``. A checkpoint of the same step already there (the final checkpoint
    re-written after a resume, say) is swapped out atomically where the OS can (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``), so that a kill at any moment leaves one of the two under the final name; elsewhere it is
    removed first, which leaves a short window with neither."""
    if final.exists():
        if _exchange(tmp, final):
            _fsync_dir(final.parent)  # the new one is in place for good before the old one goes
            shutil.rmtree(tmp, ignore_errors=True)  # the old one; what stays is a leftover the next save removes
            return
        shutil.rmtree(final)
    os.rename(tmp, final)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swap two existing paths atomically; False where the platform or file system cannot (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, musl)
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):  # not here (EXDEV: overlayfs layers)
        return False
    raise OSError(err, f"could not swap {a} and {b}: {os.strerror(err)}")


def _write(tmp: pathlib.Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
           state: dict[str, Any]) -> None:
    """Every file of a checkpoint into ``tmp``, each fsynced."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _optimizer_parts(optimizer)
    save_file({**opt_tensors, **_rng_tensors(model)}, str(tmp / "trainer.safetensors"))
    files = {}
    for name in ("model.safetensors", "trainer.safetensors"):
        _fsync_file(tmp / name)
        files[name] = file_sha256(tmp / name)
    doc = {"format": FORMAT, "step": step, **state, "optimizer": opt_meta, "files": files}
    doc["state_sha256"] = _state_digest(doc)
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The verified ``state.json`` of a checkpoint; ``CheckpointError`` naming the checkpoint if it is unusable."""
    p = pathlib.Path(path)
    if not p.is_dir():
        what = "does not exist" if not p.exists() else "is a file, not a checkpoint directory (nothing else is read)"
        raise CheckpointError(f"checkpoint {p} {what}")
    try:
        doc = json.loads((p / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {p} is incomplete: no state.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {p} has a corrupt state.json: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} is not a {FORMAT} checkpoint")
    if doc.get("state_sha256") != _state_digest(doc):
        raise CheckpointError(f"checkpoint {p} is corrupt: state.json does not match its recorded sha256")
    if not isinstance(doc.get("files"), dict) or set(doc["files"]) != {"model.safetensors", "trainer.safetensors"}:
        raise CheckpointError(f"checkpoint {p} is corrupt: state.json does not list both tensor files")
    for name, digest in doc.get("files", {}).items():
        f = p / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {p} is incomplete: {name} is missing")
        if file_sha256(f) != digest:
            raise CheckpointError(f"checkpoint {p} is corrupt: {name} does not match its recorded sha256")
    return doc


def latest_valid(run_dir: str | os.PathLike[str]) -> tuple[pathlib.Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, skipping (with a warning naming each) any that do not."""
    for p in reversed(checkpoint_dirs(run_dir)):
        try:
            return p, read_state(p)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint {p}: {err}", stacklevel=2)
    return None


def load_checkpoint(
    path: str | os.PathLike[str], *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False, state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer, RNG states) from a checkpoint; returns its ``state.json``."""
    p = pathlib.Path(path)
    doc = state if state is not None else read_state(p)
    device = next(model.parameters()).device
    try:
        load_model(model, str(p / "model.safetensors"), strict=True, device=str(device))
        if optimizer is not None or restore_rng:
            tensors = load_file(str(p / "trainer.safetensors"))
    except (SafetensorError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {p} does not fit this model: {err}") from err
    if optimizer is not None:
        optimizer.load_state_dict(fitted_optimizer_state(tensors, doc, model, optimizer))
    if restore_rng:
        _restore_rng(tensors, model, p)
    return doc
