"""What ``posenc generate`` and ``posenc translate`` share: decoding options, input lines, loading a run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any


def add_decoding_options(p: argparse.ArgumentParser, *, max_default: int) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `posenc train`")
    p.add_argument("--checkpoint", help="a checkpoint directory (default: the newest valid one)")
    p.add_argument("--strategy", choices=("greedy", "sample", "beam"), default="greedy", help="default: greedy")
    p.add_argument("--max-new-tokens", type=int, default=max_default, help=f"default: {max_default}")
    p.add_argument("--beam-size", type=int, default=4, help="beam search width (default: 4)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log-prob / length**penalty")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample among the smallest set of mass >= p")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=32, help="lines decoded together (default: 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")


# The options that only one strategy reads, with their defaults: given with another strategy they would do nothing.
_STRATEGY_OPTIONS = {"sample": {"temperature": 1.0, "top_k": None, "top_p": None},
                     "beam": {"beam_size": 4, "length_penalty": 1.0}}


def check_decoding_options(args: argparse.Namespace) -> None:
    """A ValueError for an option the chosen strategy ignores, and for --prompt given with --input."""
    for strategy, options in _STRATEGY_OPTIONS.items():
        given = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in options.items() if getattr(args, k) != v]
        if given and args.strategy != strategy:
            raise ValueError(f"{', '.join(given)} applies to --strategy {strategy}, not {args.strategy}")
    if getattr(args, "prompt", None) and args.input:
        raise ValueError(f"give prompts with --prompt or with --input, not both (--input {args.input})")


def warn_unknown(tokenizer: Any, what: str) -> None:
    """Report the characters the tokenizer did not know (each was fed to the model as ``<unk>``)."""
    count = getattr(tokenizer, "unknown_count", 0)
    if count:
        chars = "".join(sorted(tokenizer.unknown_chars))
        print(f"posenc: warning: {count} character(s) of the {what} are not in the run's vocabulary and were "
              f"read as <unk>: {chars!r}", file=sys.stderr)


def decoding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        strategy=args.strategy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, beam_size=args.beam_size, length_penalty=args.length_penalty,
    )


def load(args: argparse.Namespace, kind: str) -> tuple[Any, Any, Any]:
    """The run's model, tokenizer and config; a run of the other model kind is refused, naming both."""
    from ..train.run import load_run, resolve_device

    model, tokenizer, cfg = load_run(args.run_dir, checkpoint=args.checkpoint, device=resolve_device(args.device))
    if cfg.model.kind != kind:
        command = "generate" if kind == "lm" else "translate"
        other = "translate" if kind == "lm" else "generate"
        raise ValueError(
            f"`posenc {command}` needs a model.kind {kind!r} run; {args.run_dir} holds {cfg.model.kind!r} "
            f"(use `posenc {other}`)"
        )
    return model, tokenizer, cfg


def batches(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    if size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {size}")
    chunk: list[str] = []
    for line in lines:
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def input_lines(text: list[str] | None, path: str | None) -> Iterator[str]:
    """Lines from ``--prompt`` arguments, a file (``-`` for standard input), or standard input."""
    if text:
        yield from text
    elif path and path != "-":
        with open(path, encoding="utf-8") as f:
            yield from f
    else:
        yield from sys.stdin
