"""`vitmix` command line: sub-commands live in vitmix.commands, one module each.

Every failure a person can cause or meet ends in one line on stderr and an exit code from
:mod:`vitmix.exit_codes`, never a traceback: refused input 2, a diverged training 3, a read or
write the system refused 4, Ctrl-C 130.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands, exit_codes
from .messages import abbreviate_quotes, one_line


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusals quote the argument whole ("invalid int value: '...'"
    of a million digits): cut to one line of bounded length. Sub-command parsers are made of
    the same class."""

    def error(self, message: str):
        super().error(one_line(abbreviate_quotes(message)))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vitmix", description="SCHEME and Group-Mix Attention models for timm"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


# OSErrors that name a path someone gave wrongly, rather than a system that refused.
_BAD_PATHS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)


def _describe_os_error(err: OSError) -> str:
    if err.filename is not None and err.strerror:
        return f"cannot read or write {err.filename}: {err.strerror}"
    return str(err)


def _one_line(err: Exception) -> str:
    """The message of an error; of one raised in a DataLoader worker, whose re-raised copy
    carries the worker's traceback, the original message alone."""
    text = _describe_os_error(err) if isinstance(err, OSError) else str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.removeprefix(f"{type(err).__name__}: ")
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, *_BAD_PATHS) as err:
        # Errors meant for people: one line, no traceback.
        print(f"vitmix {args.command}: error: {one_line(_one_line(err))}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except OSError as err:
        print(f"vitmix {args.command}: error: {one_line(_describe_os_error(err))}",
              file=sys.stderr)
        return exit_codes.SYSTEM
    except KeyboardInterrupt as err:
        detail = f"; {err}" if str(err) else ""
        print(f"vitmix {args.command}: interrupted{detail}", file=sys.stderr)
        return exit_codes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
