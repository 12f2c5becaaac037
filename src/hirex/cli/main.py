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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, BackendError) as err:
        # User-facing errors carry their own fix; no traceback unless asked for.
        if args.verbose:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"hirex {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
