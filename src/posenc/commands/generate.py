"""``posenc generate RUN_DIR``: continue prompts with a trained language model, one output line per prompt."""

from __future__ import annotations

import argparse

from ._decoding import (
    add_decoding_options, batches, check_decoding_options, decoding_kwargs, input_lines, load, warn_unknown,
)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generate import generate

    check_decoding_options(args)
    model, tok, cfg = load(args, "lm")
    if cfg.data.kind == "task":  # trained as BOS prompt SEP answer EOS: the answer is the continuation
        from ..data.tasks import SEP

        def wrap(ids: list[int]) -> list[int]:
            return [tok.bos_id, *ids, tok.special_id(SEP)]
    else:  # text: plain blocks of the corpus

        def wrap(ids: list[int]) -> list[int]:
            if not ids:
                raise ValueError("an empty prompt: a text model needs at least one character to continue")
            return ids

    with torch.no_grad():
        for lines in batches(input_lines(args.prompt, args.input), args.batch_size):
            prompts = [wrap(tok.encode(line)) for line in lines]
            outs = generate(model, prompts, max_new_tokens=args.max_new_tokens, eos_id=tok.eos_id, **decoding_kwargs(args))
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
