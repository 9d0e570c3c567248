"""``posenc encodings``: list the registered encodings and their options."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from .. import encodings

    for name in encodings.names():
        opts = ", ".join(f"{k}={v!r}" for k, v in encodings.options(name).items())
        print(f"{name:12s} {opts}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encodings", help="list the registered encodings and their options")
    p.set_defaults(func=run)
