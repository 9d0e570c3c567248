"""``posenc``: the command line, a thin parse-and-dispatch layer over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_encodings(args: argparse.Namespace) -> int:
    from . import encodings

    for name in encodings.names():
        opts = ", ".join(f"{k}={v!r}" for k, v in encodings.options(name).items())
        print(f"{name:12s} {opts}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenc", description="Transformers with swappable positional encodings.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("encodings", help="list the registered encodings and their options")
    p.set_defaults(func=_cmd_encodings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"posenc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
