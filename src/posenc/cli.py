"""``posenc``: the command line, a thin parse-and-dispatch layer over the library.

Each subcommand lives in ``posenc.commands.<name>``; this file only assembles the parser and turns the
library's ``ValueError``/``TypeError``/``FileNotFoundError`` (bad input) into a one-line message and exit status 2,
and a run that had to stop (``TrainingError``: a NaN loss, out of memory, a full disk) or another ``OSError`` into
a one-line message and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .train.faults import TrainingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenc", description="Transformers with swappable positional encodings.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"posenc.commands.{name}").register(sub)
    for command in sub.choices.values():  # "--train.step 7" must not pass for --train.steps, as a file refuses it
        command.allow_abbrev = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"posenc: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`posenc encodings | head -1`): nothing left to say to it
        sys.stderr.close()
        return 0
    except (TrainingError, OSError, MemoryError) as err:
        print(f"posenc: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
