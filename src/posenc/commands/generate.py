"""``posenc generate RUN_DIR``: continue prompts with a trained language model, one output line per prompt."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ._decoding import (
    LineDraws, add_decoding_options, batches, check_decoding_options, decoding_kwargs, input_lines, line_name, load,
    warn_unknown,
)


def _wrapper(args: argparse.Namespace, tok, cfg) -> Callable[[list[int], int], list[int]]:
    """How a prompt's ids are fed: a task run as it was trained (BOS prompt SEP, the answer is the continuation),
    a text run as is, which needs at least one character; an empty line is named by its number."""
    if cfg.data.kind == "task":
        from ..data.tasks import SEP

        return lambda ids, number: [tok.bos_id, *ids, tok.special_id(SEP)]

    def wrap(ids: list[int], number: int) -> list[int]:
        if not ids:
            raise ValueError(f"{line_name(args.prompt, args.input, number)} is an empty prompt: a text model needs "
                             "at least one character to continue")
        return ids

    return wrap


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generate import generate

    check_decoding_options(args)
    model, tok, cfg = load(args, "lm")
    wrap = _wrapper(args, tok, cfg)
    draws = LineDraws(args, model)
    with torch.no_grad():
        for first, lines in batches(input_lines(args.prompt, args.input), args.batch_size):
            prompts = [wrap(tok.encode(line), first + i) for i, line in enumerate(lines)]
            outs = generate(model, prompts, max_new_tokens=args.max_new_tokens, eos_id=tok.eos_id,
                            generator=draws.take(len(lines)), **decoding_kwargs(args))
            for line, out in zip(lines, outs):
                text = tok.decode(out)
                print(text if args.continuation_only else line + text, flush=True)
    warn_unknown(tok, "prompts")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="continue prompts with a trained language model (prompt in, text out)")
    add_decoding_options(p, max_default=200)
    p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: one per line of --input/stdin")
    p.add_argument("--input", help="a file of prompts, one per line ('-' = standard input)")
    p.add_argument("--continuation-only", action="store_true", help="print only the generated text")
    p.set_defaults(func=run)
