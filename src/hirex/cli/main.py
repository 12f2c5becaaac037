"""The ``hirex`` command: one module per subcommand, each registering its own parser."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hirex.cli import (
    data_cmd,
    demo_cmd,
    eval_cmd,
    index_cmd,
    label_cmd,
    retrieve_cmd,
    serve_cmd,
    sid_cmd,
    train_cmd,
    ttt_cmd,
)
from hirex.label.backends import BackendError

SUBCOMMANDS = [
    demo_cmd,
    train_cmd,
    eval_cmd,
    retrieve_cmd,
    index_cmd,
    ttt_cmd,
    serve_cmd,
    sid_cmd,
    label_cmd,
    data_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hirex",
        description="Large-scale retrieval for recommendation: train, retrieve, evaluate.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"hirex {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hirex")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown option is reported with the subcommand's usage (the
    top-level parser would show its own, which does not list the subcommand's options)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[args.command]
        # A nested subcommand (e.g. `hirex index build`) has its own parser too.
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            name = next((v for k, v in vars(args).items() if v in action.choices), None)
            if name is not None:
                command = action.choices[name]
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    for arg in sys.argv[1:] if argv is None else argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            # A byte that is not UTF-8 (a file name from another system): refused here, before
            # it reaches a path or a file and fails there with a traceback.
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            print(f"hirex: error: argument {shown!r} is not valid UTF-8 text", file=sys.stderr)
            return 2
    args = _parse(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, OSError, BackendError) as err:
        # User-facing errors carry their own fix (an OSError names its file); no traceback
        # unless asked for.
        if args.verbose:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"hirex {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
