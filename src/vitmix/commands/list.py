"""`vitmix list`: the registered vitmix models with params and MACs."""

from __future__ import annotations

import argparse

from ..bench.model_table import describe_model, markdown_table, vitmix_model_names
from ..layers.checks import int_up_to
from ..limits import MAX_IMG_SIZE

IMG_SIZE_RULE = int_up_to(MAX_IMG_SIZE)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list", help="registered vitmix models with params and MACs",
        description="List the vitmix models registered with timm, with params, MACs and "
                    "the published reference figures where there are some.",
    )
    parser.add_argument("pattern", nargs="?", default="*",
                        help="shell-style filter on the model name (default: %(default)s, all)")
    parser.add_argument("--img-size", type=int, default=224,
                        help="input size for MACs (default: %(default)s)")
    parser.add_argument("--names-only", action="store_true", help="print the names only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    IMG_SIZE_RULE.check("--img-size", args.img_size)
    names = vitmix_model_names(args.pattern)
    if not names:
        raise ValueError(f"no vitmix model matches {args.pattern!r}; try `vitmix list`")
    if args.names_only:
        print("\n".join(names))
        return 0
    print(markdown_table([describe_model(n, args.img_size) for n in names]))
    return 0
