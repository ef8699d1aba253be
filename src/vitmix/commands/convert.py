"""`vitmix convert`: the 0.1 name of `vitmix import-weights`, kept until 0.2 with a warning.

Delete this file to drop the old name; nothing else refers to it.
"""

from __future__ import annotations

import argparse
import sys

from .._deprecated import REMOVED_IN
from . import import_weights


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help=f"deprecated name of `vitmix {import_weights.NAME}`",
        description=f"Deprecated: use `vitmix {import_weights.NAME}`. "
                    + import_weights.DESCRIPTION,
    )
    import_weights.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # On stderr, before any work: scripts that parse stdout keep working, and a failing run
    # still tells its user the new name.
    print(f"vitmix convert: deprecated, use `vitmix {import_weights.NAME}` (same arguments); "
          f"`vitmix convert` will be removed in vitmix {REMOVED_IN}", file=sys.stderr)
    return import_weights.run(args)
