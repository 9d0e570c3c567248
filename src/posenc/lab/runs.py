"""One (encoding, seed) run of the lab: its config, model, training with resumable checkpoints, evaluation.

This is the small interface ``compare`` and ``extend`` are written against -- ``train_run(config, run_dir)``
trains (or resumes, or reuses) one run, ``load_run(run_dir)`` gives back its model (a finished run's; an
unfinished one is refused unless asked for), and ``evaluate(model, config, length)`` measures it at one length.
A run directory holds ``run.json`` (the resolved config and the step reached), ``model-<step>.safetensors`` and
``optim-<step>.safetensors`` (optimizer moments and the RNG state). Each file is written to a temporary name
and renamed; ``run.json``, renamed last, names the files of its step with their sha256 and is the commit point,
so a run killed at any moment resumes from its last complete checkpoint (the files of the one before are
removed only after it), and a corrupt file is named, not loaded.
Batches are a pure function of (seed, step), so a resumed run sees the data an uninterrupted one would.

Legend: B batch, T length, V vocabulary.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from .._checks import check_positive_number
from ..models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig
from ..train.checkpoint import (
    MODULE_RNG_PREFIX, file_sha256, module_generator_states, restore_module_generators,
)
from .tasks import IGNORE, SEQUENCE_TASKS, CharText, SequenceTask

__all__ = [
    "RunConfig", "check_buildable", "check_lengths", "evaluate", "is_finished", "load_run", "make_data", "make_model",
    "make_optimizer", "train_run",
]


@dataclass
class RunConfig:
    """Everything that defines one run; two runs with equal configs are the same run."""

    encoding: str = "none"
    seed: int = 0
    task: str = "repeat"  # copy | reverse | repeat | lm
    text: str | None = None  # the text file of task "lm"
    arch: str = "decoder"  # decoder (decoder-only) | seq2seq (encoder-decoder)
    train_min: int = 1  # task lengths U(train_min, train_max); for "lm" the training context is train_max
    train_max: int = 20
    symbols: int = 16
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.0
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    checkpoint_every: int = 250
    eval_examples: int = 200  # test examples per length (tasks)
    eval_tokens: int = 16384  # predicted validation characters per length (lm)
    init_from: str | None = None  # start from this run directory's weights (a fine-tune)

    def __post_init__(self) -> None:
        if self.task not in (*SEQUENCE_TASKS, "lm"):
            raise ValueError(f"task must be one of {', '.join((*SEQUENCE_TASKS, 'lm'))}; got {self.task!r}")
        if self.arch not in ("decoder", "seq2seq"):
            raise ValueError(f"arch must be 'decoder' or 'seq2seq', got {self.arch!r}")
        if self.task == "lm" and (self.text is None or self.arch != "decoder"):
            raise ValueError("task 'lm' needs a text file (--text) and the decoder-only architecture")
        if not 1 <= self.train_min <= self.train_max:
            raise ValueError(f"need 1 <= train_min <= train_max, got {self.train_min}, {self.train_max}")
        for name in ("steps", "batch_size", "checkpoint_every", "eval_examples", "eval_tokens", "d_model", "num_heads",
                     "num_layers", "dim_feedforward"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        self._check_model_and_optimizer()

    def _check_model_and_optimizer(self) -> None:
        """Settings the model or the optimizer would refuse only once built: checked here, so that a comparison
        refuses them before it writes anything to its output directory."""
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        check_positive_number("lr", self.lr)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"dropout must lie in [0, 1], got {self.dropout}")

    @property
    def metric(self) -> str:
        return "perplexity" if self.task == "lm" else "exact_match"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"run config has unknown fields {unknown}")
        return cls(**data)


def make_data(config: RunConfig) -> SequenceTask | CharText:
    if config.task == "lm":
        return CharText(config.text)  # type: ignore[arg-type]
    return SequenceTask(config.task, config.symbols)


def make_model(config: RunConfig, vocab_size: int) -> nn.Module:
    common = dict(
        d_model=config.d_model, num_heads=config.num_heads, dim_feedforward=config.dim_feedforward,
        dropout=config.dropout, encoding=config.encoding,
    )
    if config.arch == "seq2seq":
        pad = vocab_size - 4  # SequenceTask's PAD id
        return Seq2Seq(Seq2SeqConfig(
            src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, num_encoder_layers=config.num_layers,
            num_decoder_layers=config.num_layers, pad_id=pad, **common,
        ))
    # Right padding under a causal mask never reaches a real token, so no padding mask is needed.
    return LanguageModel(LMConfig(vocab_size=vocab_size, num_layers=config.num_layers, **common))


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))


def check_buildable(configs: Sequence[RunConfig]) -> None:
    """Build each distinct model (and its optimizer) once and throw it away: a setting that the model or the
    optimizer refuses fails here, before a comparison writes its setup, not after some runs have trained.
    The global RNG is left as it was (each run seeds its own)."""
    seen: set[str] = set()
    data = None
    with torch.random.fork_rng(devices=[]):
        for config in configs:
            key = json.dumps({k: v for k, v in config.to_dict().items() if k != "seed"}, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            data = data if data is not None else make_data(config)
            make_optimizer(config, make_model(config, data.vocab_size))


def _logits(model: nn.Module, batch: Any) -> torch.Tensor:
    if batch.src is not None:
        return model(batch.src, batch.inputs)  # (B, T, V)
    return model(batch.inputs)  # (B, T, V)


def _lr(config: RunConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    frac = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _atomic(write: Callable[[str], None], path: pathlib.Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save(run_dir: pathlib.Path, config: RunConfig, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    state = opt.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, s in state["state"].items() for k, v in s.items()}
    tensors["rng"] = torch.get_rng_state()
    tensors |= module_generator_states(model)  # randomized positions' sampler: a resume continues its draws
    names = {"model": f"model-{step:08d}.safetensors", "optim": f"optim-{step:08d}.safetensors"}
    _atomic(lambda p: save_model(model, p), run_dir / names["model"])
    _atomic(lambda p: save_file(tensors, p), run_dir / names["optim"])
    files = {kind: {"name": name, "sha256": file_sha256(run_dir / name)} for kind, name in names.items()}
    meta = {"step": step, "finished": step >= config.steps, "config": config.to_dict(),
            "param_groups": state["param_groups"], "files": files}
    _atomic(lambda p: pathlib.Path(p).write_text(json.dumps(meta, indent=1)), run_dir / "run.json")  # the commit
    for old in run_dir.glob("*.safetensors"):  # the previous checkpoint's files, now that this one is complete
        if old.name not in names.values():
            old.unlink()


def _checkpoint_file(run_dir: pathlib.Path, meta: dict[str, Any], kind: str) -> pathlib.Path:
    """The ``kind`` ("model" or "optim") file that ``run.json`` names, its checksum verified (a run written before
    run.json named its files has ``<kind>.safetensors``, unchecked)."""
    entry = meta.get("files", {}).get(kind)
    if entry is None:
        return run_dir / f"{kind}.safetensors"
    path = run_dir / entry["name"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise ValueError(f"{path} is missing or does not match the sha256 run.json records (a corrupt or partial "
                         f"file); delete {run_dir} to train the run again")
    return path


def _load(path: pathlib.Path, load: Callable[[str], Any]) -> Any:
    try:
        return load(str(path))
    except Exception as err:  # safetensors' own error names no file
        raise ValueError(f"{path} is not a readable checkpoint file ({err})") from None


def _read_meta(run_dir: pathlib.Path) -> dict[str, Any] | None:
    path = run_dir / "run.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete the run directory to retrain it") from None


def _check_same(run_dir: pathlib.Path, meta: dict[str, Any], config: RunConfig) -> None:
    saved = meta["config"]
    diff = {k: (saved.get(k), v) for k, v in config.to_dict().items() if saved.get(k) != v}
    if diff:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{run_dir} holds a run of another config ({listed}); use another output directory")


def _check_finished(run_dir: pathlib.Path, meta: dict[str, Any]) -> None:
    """A run stopped part-way holds the weights of a model still in training: measured or pictured, its numbers
    would pass for those of the finished run. Refuse, saying how far it got and how to finish it."""
    step, steps = int(meta["step"]), int(meta["config"]["steps"])
    if step < steps:
        command = "posenc extend" if meta["config"].get("init_from") else "posenc compare"
        raise ValueError(f"{run_dir} is an unfinished run: it stopped at step {step} of {steps} (config.steps); run "
                         f"`{command}` again with the same settings to finish it (it resumes from step {step})")


def check_lengths(
    config: RunConfig, test_lengths: Sequence[int], *, data: SequenceTask | CharText | None = None
) -> None:
    """For ``lm``, the training context and every test length must fit the text: checked before anything trains
    or is written, rather than as a torch error in training or after a whole run. Sequence tasks have no limit."""
    if config.task != "lm":
        return
    data = data if data is not None else make_data(config)
    if isinstance(data, CharText):
        data.check_context(config.train_max)
        if test_lengths:
            data.check_eval_length(max(test_lengths))


def is_finished(run_dir: str | pathlib.Path, config: RunConfig) -> bool:
    meta = _read_meta(pathlib.Path(run_dir))
    if meta is None:
        return False
    _check_same(pathlib.Path(run_dir), meta, config)
    return bool(meta.get("finished"))


def _restore(run_dir: pathlib.Path, meta: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer) -> int:
    _load(_checkpoint_file(run_dir, meta, "model"), lambda p: load_model(model, p))
    path = _checkpoint_file(run_dir, meta, "optim")
    tensors = _load(path, load_file)
    torch.set_rng_state(tensors.pop("rng"))
    restore_module_generators(tensors, model, path)
    tensors = {k: v for k, v in tensors.items() if not k.startswith(MODULE_RNG_PREFIX)}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


def train_run(
    config: RunConfig, run_dir: str | pathlib.Path, *, on_step: Callable[[int], None] | None = None
) -> nn.Module:
    """Train one run to ``config.steps``, resuming from its last checkpoint; a finished run is only loaded."""
    run_dir = pathlib.Path(run_dir)
    data = make_data(config)
    check_lengths(config, [], data=data)
    torch.manual_seed(config.seed)
    model = make_model(config, data.vocab_size)
    opt = make_optimizer(config, model)
    meta = _read_meta(run_dir)
    step = 0
    if meta is not None:
        _check_same(run_dir, meta, config)
        step = _restore(run_dir, meta, model, opt)
    elif config.init_from is not None:
        init_dir = pathlib.Path(config.init_from)
        init_meta = _read_meta(init_dir)
        if init_meta is None:
            raise FileNotFoundError(f"init_from {init_dir} holds no run.json: not a posenc lab run directory")
        _check_finished(init_dir, init_meta)
        _load(_checkpoint_file(init_dir, init_meta, "model"), lambda p: load_model(model, p))
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no directory behind
    model.train()
    seq2seq = config.arch == "seq2seq"
    while step < config.steps:
        if isinstance(data, CharText):
            batch = data.train_batch(config.train_max, config.batch_size, config.seed, step)
        else:
            batch = data.train_batch(
                config.train_min, config.train_max, config.batch_size, config.seed, step, seq2seq=seq2seq
            )
        for group in opt.param_groups:
            group["lr"] = _lr(config, step)
        logits = _logits(model, batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save(run_dir, config, model, opt, step)
        if on_step is not None:
            on_step(step)
    return model.eval()


def load_run(run_dir: str | pathlib.Path, *, allow_unfinished: bool = False) -> tuple[nn.Module, RunConfig]:
    """The model and config of a run directory (its last checkpoint), in evaluation mode.

    An unfinished run (stopped before ``config.steps``) is refused, naming the step it reached, unless
    ``allow_unfinished``: measuring or picturing it would report a model that is still half trained.
    """
    run_dir = pathlib.Path(run_dir)
    meta = _read_meta(run_dir)
    if meta is None:
        if (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} is a run of `posenc train` (config.json); this takes a run of `posenc "
                                    "compare` or `posenc extend` (OUT/runs/NAME, with a run.json)")
        raise FileNotFoundError(f"{run_dir} holds no run.json: not a posenc lab run directory")
    if not allow_unfinished:
        _check_finished(run_dir, meta)
    config = RunConfig.from_dict(meta["config"])
    model = make_model(config, make_data(config).vocab_size)
    _load(_checkpoint_file(run_dir, meta, "model"), lambda p: load_model(model, p))
    return model.eval(), config


@torch.no_grad()
def evaluate(
    model: nn.Module, config: RunConfig, length: int, *, data: SequenceTask | CharText | None = None, chunk: int = 100
) -> float:
    """Exact match at task length ``length`` (tasks), or perplexity with ``length``-character non-overlapping
    windows (lm)."""
    data = data if data is not None else make_data(config)
    model.eval()
    if isinstance(data, CharText):
        batch = data.eval_windows(length, config.eval_tokens)
        total, count = 0.0, 0
        for i in range(0, batch.size, chunk):
            logits = model(batch.inputs[i : i + chunk])  # (b, T, V)
            tgt = batch.targets[i : i + chunk]
            total += float(F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="sum"))
            count += tgt.numel()
        return math.exp(total / count)
    batch = data.eval_batch(length, config.eval_examples, seq2seq=config.arch == "seq2seq")
    right = 0
    for i in range(0, batch.size, chunk):
        part = type(batch)(**{k: (None if v is None else v[i : i + chunk]) for k, v in vars(batch).items()})
        pred = _logits(model, part).argmax(-1)  # (b, T)
        ok = (pred == part.targets) | (part.targets == IGNORE)
        right += int(ok.all(-1).sum())
    return right / batch.size


class PictureInput(NamedTuple):
    """A picture's input: the model's positional arguments, a label per position of the sequence a decoder reads
    (the whole sequence of a decoder-only model, the target of a seq2seq one), and a label per source position
    (seq2seq only, else None): cross-attention's keys are source positions, its queries target ones."""

    inputs: tuple[torch.Tensor, ...]
    labels: list[str]
    source_labels: list[str] | None = None


def encode_input(config: RunConfig, text: str) -> PictureInput:
    """A picture's input for a run (see :class:`PictureInput`).

    For a sequence task ``text`` is the task input as symbol ids separated by spaces (``"3 1 4 1 5"``) and the
    model sees the whole worked example (input, separator, answer); for ``lm`` it is raw text.
    """
    if not text:
        raise ValueError("the input is empty: give at least one symbol (a task) or character (lm) to picture")
    data = make_data(config)
    if isinstance(data, CharText):
        index = {c: i for i, c in enumerate(data.chars)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise ValueError(f"characters {unknown} are not in the vocabulary of {data.path}")
        return PictureInput((torch.tensor([[index[c] for c in text]]),), list(text))
    try:
        x = [int(t) for t in text.split()]
    except ValueError:
        raise ValueError(f"a {config.task} input is symbol ids separated by spaces, got {text!r}") from None
    if not x or min(x) < 0 or max(x) >= data.symbols:
        raise ValueError(f"symbols must lie in [0, {data.symbols}) and be at least one, got {x}")
    xs = torch.tensor(x)
    y = xs.flip(0) if data.name == "reverse" else xs
    names = {data.sep: "SEP", data.eos: "EOS", data.bos: "BOS"}
    label = [names.get(int(t), str(int(t))) for t in (*xs, data.sep, *y)]
    if config.arch == "seq2seq":
        tgt = torch.cat([torch.tensor([data.bos]), y])
        return PictureInput((xs[None], tgt[None]), [names[data.bos], *label[len(x) + 1 :]], label[: len(x)])
    seq = torch.cat([xs, torch.tensor([data.sep]), y])
    return PictureInput((seq[None],), label)
