"""Run directories: building the dataset and model of a config, and ``load_run`` for everyone downstream.

A run directory holds::

    config.json                 the resolved RunConfig (every section, every field)
    tokenizer.json              the tokenizer (its fingerprint is recorded in each checkpoint)
    checkpoints/step_00001500/  model.safetensors, trainer.safetensors, state.json (see checkpoint.py)
    metrics.csv, metrics.jsonl  training and evaluation rows
    eval_lengths.csv            exact match per task length, per evaluation
    results.json                the final evaluation
    tensorboard/                only with train.tensorboard = true

``load_run(run_dir)`` returns ``(model, tokenizer, config)``: the model of the newest valid checkpoint, in eval
mode, with the tokenizer it was trained with (one joint vocabulary for a seq2seq model's source and target).
The generation command and the lab call it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data.dataset import Dataset
from ..data.tasks import TaskDataset, TaskOptions
from ..data.text import TextDataset
from ..data.tokenizers import Tokenizer, load_tokenizer
from ..encodings import parse_layers
from ..models import LanguageModel, LMConfig, Seq2Seq, Seq2SeqConfig
from .checkpoint import CheckpointError, latest_valid, load_checkpoint, read_state  # noqa: F401  (latest_valid re-exported)
from .config import ModelConfig, RunConfig, run_config_from_dict

__all__ = [
    "DATASETS", "build_dataset", "build_model", "check_compatible", "default_run_dir", "load_run",
    "register_dataset", "resolve_device",
]

Builder = Callable[[RunConfig, "Tokenizer | None"], Dataset]
DATASETS: dict[str, Builder] = {}


def register_dataset(kind: str, builder: Builder) -> Builder:
    """Make ``data.kind = kind`` build a dataset with ``builder(config, tokenizer_or_None)``."""
    DATASETS[kind] = builder
    return builder


def _task_dataset(cfg: RunConfig, tokenizer: Tokenizer | None) -> Dataset:
    d = cfg.data
    return TaskDataset(
        task=d.task, model_kind=cfg.model.kind, train_lengths=tuple(d.train_lengths),  # type: ignore[arg-type]
        test_lengths=tuple(d.test_lengths), batch_size=d.batch_size, eval_examples=cfg.eval.examples,  # type: ignore[arg-type]
        eval_batch_size=cfg.eval.batch_size, eval_lengths=cfg.eval.lengths or None, seed=cfg.train.seed,
        options=TaskOptions(alphabet_size=d.alphabet_size, reversed_digits=d.reversed_digits),
    )


def _text_dataset(cfg: RunConfig, tokenizer: Tokenizer | None) -> Dataset:
    d = cfg.data
    if cfg.model.kind != "lm":
        raise ValueError(f"language modelling on a text file needs model.kind 'lm', got {cfg.model.kind!r}")
    if not d.path:
        raise ValueError("data.kind 'text' needs data.path, the text file to model")
    return TextDataset(
        path=d.path, block_size=d.block_size, batch_size=d.batch_size, val_fraction=d.val_fraction,
        seed=cfg.train.seed, tokenizer=tokenizer if tokenizer is not None else d.tokenizer,
        bpe_vocab_size=d.bpe_vocab_size, eval_max_blocks=cfg.eval.max_blocks, eval_batch_size=cfg.eval.batch_size,
    )


register_dataset("task", _task_dataset)
register_dataset("text", _text_dataset)


def build_dataset(cfg: RunConfig, *, tokenizer: Tokenizer | None = None) -> Dataset:
    """The dataset ``cfg.data`` describes; ``tokenizer`` (e.g. a run directory's) replaces a freshly built one."""
    if cfg.data.kind not in DATASETS:
        try:  # the translation pipeline registers itself when its module is present
            from . import translation_data  # noqa: F401
        except ImportError:
            pass
    if cfg.data.kind not in DATASETS:
        raise ValueError(f"data.kind must be one of {', '.join(sorted(DATASETS))}; got {cfg.data.kind!r}")
    return DATASETS[cfg.data.kind](cfg, tokenizer)


def build_model(cfg: ModelConfig, tokenizer: Tokenizer) -> nn.Module:
    """A ``LanguageModel`` or ``Seq2Seq`` over the tokenizer's vocabulary.

    The decoder-only model gets ``pad_id=None``: its batches are right-padded and causal, so no real token ever
    attends to padding and the fused causal attention path stays available; pass ``padding_mask`` explicitly for
    left-padded input (generation does).
    """
    common: dict[str, Any] = dict(
        d_model=cfg.d_model, num_heads=cfg.num_heads, dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout,
        activation=cfg.activation, norm_first=cfg.norm_first, encoding=parse_layers(cfg.encoding),
        scale_embeddings=cfg.scale_embeddings,
    )
    if cfg.kind == "lm":
        return LanguageModel(LMConfig(vocab_size=tokenizer.vocab_size, num_layers=cfg.num_layers,
                                      tie_embeddings=cfg.tie_embeddings, pad_id=None, **common))
    if cfg.kind == "seq2seq":
        return Seq2Seq(Seq2SeqConfig(
            src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size,
            num_encoder_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
            decoder_encoding=parse_layers(cfg.decoder_encoding) if cfg.decoder_encoding else None,
            share_embeddings=cfg.share_embeddings, tie_output=cfg.tie_embeddings, pad_id=tokenizer.pad_id, **common,
        ))
    raise ValueError(f"model.kind must be 'lm' or 'seq2seq', got {cfg.kind!r}")


def check_compatible(state: dict[str, Any], cfg: ModelConfig, tokenizer: Tokenizer, where: str) -> None:
    """Refuse a checkpoint of another model config or vocabulary, saying what differs."""
    saved = state.get("model_config", {})
    current = cfg.__dict__
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if state.get("tokenizer_fingerprint") != tokenizer.fingerprint():
        diffs.append(f"tokenizer: checkpoint vocabulary of {state.get('vocab_size')} tokens (fingerprint "
                     f"{str(state.get('tokenizer_fingerprint'))[:12]}), this run {tokenizer.vocab_size} tokens "
                     f"(fingerprint {tokenizer.fingerprint()[:12]})")
    if diffs:
        raise CheckpointError(f"checkpoint {where} was trained with another configuration: " + "; ".join(diffs))


def default_run_dir(cfg: RunConfig) -> pathlib.Path:
    """``runs/<task or file stem>-<kind>-<encoding>``: the same config finds the same directory (and resumes)."""
    what = cfg.data.task if cfg.data.kind == "task" else pathlib.Path(cfg.data.path or cfg.data.kind).stem
    enc = re.sub(r"[^A-Za-z0-9.=_-]+", "_", cfg.model.encoding).strip("_")
    return pathlib.Path("runs") / f"{what}-{cfg.model.kind}-{enc}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available here")
    return dev


def load_run(
    run_dir: str | os.PathLike[str], *, checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Tokenizer, RunConfig]:
    """``(model, tokenizer, config)`` of a run: the newest valid checkpoint (or ``checkpoint``), eval mode."""
    root = pathlib.Path(run_dir)
    if not (root / "config.json").is_file():
        if (root / "run.json").is_file():
            raise FileNotFoundError(f"{root} is a run of `posenc compare` (run.json); this takes a run directory of "
                                    "`posenc train` (with a config.json); `posenc plot attention` reads compare runs")
        raise FileNotFoundError(f"{root} is not a run directory (no config.json)")
    try:
        saved = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{root / 'config.json'} is not valid JSON ({err})") from None
    cfg = run_config_from_dict(saved)
    tokenizer = load_tokenizer(root / "tokenizer.json")
    if checkpoint is None:
        found = latest_valid(root)
        if found is None:
            raise FileNotFoundError(f"run {root} has no valid checkpoint in {root / 'checkpoints'}")
        path, state = found
    else:
        path, state = pathlib.Path(checkpoint), read_state(checkpoint)
    check_compatible(state, cfg.model, tokenizer, str(path))
    model = build_model(cfg.model, tokenizer).to(device)
    load_checkpoint(path, model=model, state=state)
    model.eval()
    return model, tokenizer, cfg
