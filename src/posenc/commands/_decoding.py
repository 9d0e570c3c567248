"""What ``posenc generate`` and ``posenc translate`` share: decoding options, input lines, loading a run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
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
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=32, help="lines decoded together (default: 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")


# The options that only one strategy reads, with their defaults: given with another strategy they would do nothing.
_STRATEGY_OPTIONS = {"sample": {"temperature": 1.0, "top_k": None, "top_p": None, "seed": None},
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
    """The library's options; the draws of sampling come from :class:`LineDraws`, passed per batch."""
    return dict(
        strategy=args.strategy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        beam_size=args.beam_size, length_penalty=args.length_penalty,
    )


class LineDraws:
    """The sampling draws of one command: one ``torch.Generator``, seeded by ``--seed`` (0 by default), gives each
    input line in turn a generator of its own. A line's samples then depend on the seed and its line number only:
    not on ``--batch-size`` or on the lines batched with it, and two identical lines get different samples.
    Re-seeding for each batch instead repeated the same draws in every batch."""

    def __init__(self, args: argparse.Namespace, model: Any) -> None:
        import torch

        self.sampling = args.strategy == "sample"
        self.device = next(iter(model.parameters())).device
        self.seeds = torch.Generator().manual_seed(0 if args.seed is None else args.seed)

    def take(self, count: int) -> list[Any] | None:
        """One generator per line of the next ``count`` lines (None unless sampling)."""
        import torch

        if not self.sampling:
            return None
        seeds = torch.randint(0, 2**62, (count,), generator=self.seeds).tolist()
        return [torch.Generator(device=self.device).manual_seed(s) for s in seeds]


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


def batches(lines: Iterator[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """``(number of the first line, from 1; up to size lines)``: the numbers let a message name a bad line."""
    if size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {size}")
    chunk: list[str] = []
    first = 1
    for line in lines:
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) == size:
            yield first, chunk
            first, chunk = first + size, []
    if chunk:
        yield first, chunk


def line_name(text: list[str] | None, path: str | None, number: int) -> str:
    """How a message names input line ``number`` (from 1): which ``--prompt``, or which line of which file."""
    if text:
        return f"--prompt number {number}"
    return f"line {number} of {path if path and path != '-' else 'standard input'}"


def _decoded(raw: Iterable[bytes], where: str) -> Iterator[str]:
    """UTF-8 lines, or a ValueError naming the file and the line that is not UTF-8 (the decoder's own message
    names neither)."""
    for number, line in enumerate(raw, start=1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"line {number} of {where} is not UTF-8 text (byte {line[err.start]:#04x} at byte "
                             f"{err.start + 1} of the line); save it as UTF-8") from None


def input_lines(text: list[str] | None, path: str | None) -> Iterator[str]:
    """Lines from ``--prompt`` arguments, a file (``-`` for standard input), or standard input."""
    if text:
        yield from text
    elif path and path != "-":
        with open(path, "rb") as f:
            yield from _decoded(f, path)
    elif hasattr(sys.stdin, "buffer"):
        yield from _decoded(sys.stdin.buffer, "standard input")
    else:  # a text stream without bytes underneath (already decoded)
        yield from sys.stdin
