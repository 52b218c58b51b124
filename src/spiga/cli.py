"""Command line: argument parsing only; every command calls the library.

Each sub-command has an `_add_<name>(subparsers)` that declares its arguments and a
`_run_<name>(args)` that calls the library. Errors that spiga raises on purpose
(`SpigaError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import SpigaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spiga", description="Face landmarks and head pose with SPIGA.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


_COMMANDS: list = []


def _command(add):
    _COMMANDS.append(add)
    return add


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except SpigaError as exc:
        print(f"spiga: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spiga: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
