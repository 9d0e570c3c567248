"""Typed configuration of a training run: five dataclass sections, a TOML/JSON file, command-line overrides.

Resolution order: the dataclass defaults, then a config file (``--config run.toml``; sections ``[model]``,
``[data]``, ``[optim]``, ``[train]``, ``[eval]``), then command-line overrides, which are generated from the
dataclasses (``--model.d_model 256``, ``--data.train_lengths 1,20``, booleans as ``true``/``false``), so every
field is settable and ``--help`` lists each with its default. A few frequent fields have short aliases
(``--task``, ``--encoding``, ``--steps``, ``--precision``, ``--resume``, ``--run-dir``, ``--seed``, ``--device``).
The resolved config is saved as ``config.json`` in the run directory. Unknown keys are errors that list the valid
ones; values are checked against the field's type.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from .._checks import bool_word

__all__ = [
    "ALIASES", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig",
    "add_override_arguments", "apply_overrides", "check_types", "load_config_file", "run_config_from_dict", "to_toml",
]


@dataclass
class ModelConfig:
    """The network. ``encoding`` is a spec string, or one per layer: ``"none"``, ``"sinusoidal"``,
    ``"rope*3|none"`` (see ``posenc.encodings.parse_layers``)."""

    kind: str = "lm"  # lm (decoder-only) | seq2seq (encoder-decoder)
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 3  # decoder-only
    num_encoder_layers: int = 3  # seq2seq
    num_decoder_layers: int = 3  # seq2seq
    dim_feedforward: int = 256
    dropout: float = 0.0
    activation: str = "gelu"
    norm_first: bool = True
    encoding: str = "none"
    decoder_encoding: str = ""  # seq2seq: the decoder's encoding when it differs from ``encoding``
    tie_embeddings: bool = True
    share_embeddings: bool = False  # seq2seq: one embedding table for source and target
    scale_embeddings: bool = True


@dataclass
class DataConfig:
    """What to train on: a built-in task, a text file (language modelling), or a parallel corpus."""

    kind: str = "task"  # task | text | translation
    batch_size: int = 32
    # tasks (posenc.data.tasks)
    task: str = "copy"
    train_lengths: list[int] = field(default_factory=lambda: [1, 10])
    test_lengths: list[int] = field(default_factory=lambda: [11, 20])
    alphabet_size: int = 16
    reversed_digits: bool = True
    # text (posenc.data.text)
    path: str = ""
    tokenizer: str = "char"  # char | bpe
    bpe_vocab_size: int = 2048
    block_size: int = 256
    val_fraction: float = 0.1
    # translation (posenc.data.translation): one TSV or a source file and a target file per set
    train_files: list[str] = field(default_factory=list)
    valid_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    max_len: int = 256
    max_tokens: int = 4096


@dataclass
class OptimConfig:
    """Optimizer and schedule. With ``schedule = "noam"`` the rate is ``lr · d^-0.5 · min(s^-0.5, s·w^-1.5)``
    (Vaswani et al. 2017, eq. 3), so ``lr = 1`` is the paper's; otherwise ``lr`` is the peak rate."""

    name: str = "adamw"  # adam | adamw
    lr: float = 3e-3
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.01  # AdamW only, matrices only
    schedule: str = "cosine"  # noam | cosine | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine: the final rate as a fraction of the peak
    label_smoothing: float = 0.0
    grad_clip: float = 1.0  # max global norm; 0 = off


@dataclass
class TrainConfig:
    """How to train. ``threads`` defaults to 1: the small models of the built-in tasks gain little from a second
    thread, and when other processes share the cores, OpenMP threads contending for them made a training step
    about 50 times slower in our measurements (fp32, d=64: 33 ms with 1 thread, 1.7 s with 2 under load)."""

    steps: int = 2000
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights and optimizer stay fp32; pays off for wide models)
    compile: bool = False
    attention: str = "auto"  # auto | fused | math: auto takes the math path for bf16 on CPU (faster there)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 1  # torch.set_num_threads (0 = torch's default); see the note above
    fast_path: bool = False  # posenc.fast.use_fast_path: cheaper dropout masks and attention passes, same function
    flush_denormal: bool = True  # treat denormal floats as zero: bias encodings' attention runs ~1.7x faster on CPU
    reuse_memory: bool = True  # posenc.fast.reuse_freed_memory: freed tensors' memory is not faulted in anew each step
    run_dir: str = ""  # default: runs/<task or file>-<encoding>
    resume: str = "auto"  # auto | never | a checkpoint directory
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 100
    progress: str = "auto"  # auto (a bar when stderr is a terminal) | on | off
    tensorboard: bool = False
    time_limit: float = 0.0  # seconds of training before stopping early (0 = none); breaks exact reproducibility
    time_limit_clock: str = "wall"  # wall | cpu (this process's CPU time: robust to other load on the machine)
    nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss does (posenc.train.faults)
    parallel: str = "ddp"  # under torchrun: ddp (DistributedDataParallel) | fsdp (FSDP2 fully_shard)
    dist_timeout: float = 600.0  # seconds a collective waits for a peer before the job fails (torchrun only)


@dataclass
class EvalConfig:
    every: int = 500  # steps between evaluations (and always at the end); 0 = only at the end
    examples: int = 256  # tasks: examples per evaluation set
    batch_size: int = 256
    max_blocks: int = 0  # text: validation blocks to read (0 = all)
    lengths: list[int] = field(default_factory=list)  # tasks: evaluate at these lengths instead


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}

ALIASES: dict[str, str] = {
    "task": "data.task", "encoding": "model.encoding", "steps": "train.steps", "precision": "train.precision",
    "resume": "train.resume", "run-dir": "train.run_dir", "seed": "train.seed", "device": "train.device",
    "parallel": "train.parallel",
}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """A value from a file (already typed) or the command line (text) -> the field's type, or an error."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list of {item.__name__}, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and (truth := bool_word(value)) is not None:
            return truth
        raise TypeError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"{where} must be an int, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise TypeError(f"{where} must be an int, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise TypeError(f"{where} must be a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {hint!r}")


def _section_from_dict(cls: type, data: dict[str, Any], where: str, base: Any = None) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"[{where}] must be a table of settings, got {type(data).__name__}")
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                         f"valid: {', '.join(sorted(hints))}")
    obj = base if base is not None else cls()
    for k, v in data.items():
        setattr(obj, k, _coerce(v, hints[k], f"{where}.{k}"))
    return obj


def _is_type(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_type(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_types(cfg: RunConfig) -> None:
    """A TypeError naming the first field whose value is not of the field's type: what a file or the command line
    is refused for is refused for a config built in Python too (``steps = 2.5`` would never reach its last step)."""
    for section, cls in SECTIONS.items():
        values = getattr(cfg, section)
        if not isinstance(values, cls):
            raise TypeError(f"{section} must be a {cls.__name__}, got {type(values).__name__}")
        for name, hint in _hints(cls).items():
            value = getattr(values, name)
            if not _is_type(value, hint):
                raise TypeError(f"{section}.{name} must be {_type_words(hint)}, got {value!r}")


def _type_words(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return f"a list of {typing.get_args(hint)[0].__name__}"
    return {int: "an int", float: "a number", bool: "true or false", str: "a string"}[hint]


def run_config_from_dict(data: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """A ``RunConfig`` from nested dicts (a parsed file or ``config.json``), over ``base`` or the defaults."""
    cfg = base if base is not None else RunConfig()
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    for name, values in data.items():
        _section_from_dict(SECTIONS[name], values, name, getattr(cfg, name))
    return cfg


def load_config_file(path: str | pathlib.Path, base: RunConfig | None = None) -> RunConfig:
    """Read a ``.toml`` or ``.json`` config file."""
    p = pathlib.Path(path)
    if p.is_dir():
        raise ValueError(f"config file {p} is a directory")
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    kind = "JSON" if p.suffix == ".json" else "TOML"
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"config file {p} is not valid {kind} text: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a table of sections ([model], [train], ...), "
                         f"got a {type(data).__name__}")
    return run_config_from_dict(data, base)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return f"{typing.get_args(hint)[0].__name__},..."
    return hint.__name__


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--section.field`` option per config field (default: not given), help showing the default."""
    inverse = {v: k for k, v in ALIASES.items()}
    defaults = RunConfig()
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        for name, hint in _hints(cls).items():
            dest = f"{section}.{name}"
            flags = [f"--{dest}"] + ([f"--{inverse[dest]}"] if dest in inverse else [])
            default = getattr(getattr(defaults, section), name)
            shown = ",".join(map(str, default)) if isinstance(default, list) else str(default).lower() \
                if isinstance(default, bool) else default
            group.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, metavar=_type_name(hint).upper(),
                               help=f"(default: {shown!r})")


def apply_overrides(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """Apply every ``--section.field`` given on the command line."""
    for key, value in vars(args).items():
        if "." not in key:
            continue
        section, name = key.split(".", 1)
        if section in SECTIONS:
            _section_from_dict(SECTIONS[section], {name: value}, section, getattr(cfg, section))
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        # a JSON string is a TOML basic string, but for two things: TOML takes no surrogate-pair escapes (so
        # characters beyond U+FFFF stay literal) and wants DEL escaped (JSON escapes only U+0000-U+001F)
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(v)


def to_toml(cfg: RunConfig) -> str:
    """The config as a TOML file that ``--config`` reads back."""
    out = []
    for section, values in cfg.to_dict().items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)
