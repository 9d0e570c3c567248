"""One module per ``posenc`` subcommand. Each defines ``register(subparsers)``, which adds its parser and sets
``func`` to a function ``(args) -> int``. ``posenc.cli`` imports the ones named in ``COMMANDS``."""

COMMANDS: tuple[str, ...] = ("train", "eval", "generate", "translate", "compare", "extend", "plot", "encodings")
