"""``posenc translate RUN_DIR``: translate lines (a file or standard input) with a trained seq2seq model,
one output line per input line, in order."""

from __future__ import annotations

import argparse

from ._decoding import (
    LineDraws, add_decoding_options, batches, check_decoding_options, decoding_kwargs, input_lines, load, warn_unknown,
)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generate import translate

    check_decoding_options(args)
    model, tok, _ = load(args, "seq2seq")
    draws = LineDraws(args, model)
    with torch.no_grad():
        for _, lines in batches(input_lines(None, args.input), args.batch_size):
            sources = [[*tok.encode(line), tok.eos_id] for line in lines]  # sources end in EOS, as in training
            outs = translate(
                model, sources, bos_id=tok.bos_id, eos_id=tok.eos_id, max_len=args.max_new_tokens,
                generator=draws.take(len(lines)), **decoding_kwargs(args),
            )
            for out in outs:
                print(tok.decode(out), flush=True)
    warn_unknown(tok, "sources")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate lines with a trained seq2seq model (file or stdin in, lines out)")
    add_decoding_options(p, max_default=128)
    p.add_argument("input", nargs="?", help="a file, one sentence a line (default or '-': standard input)")
    p.set_defaults(func=run)
