"""`vitmix recipes`: the shipped training recipes, or one recipe's values and their source."""

from __future__ import annotations

import argparse
import textwrap

import yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recipes", help="the shipped training recipes (vitmix train --recipe NAME)",
        description="List the shipped recipes, the authors' ImageNet-1K settings for each "
                    "model, or print one recipe's values and where they come from. "
                    "`vitmix train --recipe NAME --data PATH` trains with one.",
    )
    parser.add_argument("name", nargs="?", default=None,
                        help="a recipe: print its values as --config YAML (default: list all)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.recipes import load_recipe, recipe_names

    if args.name is not None:
        recipe = load_recipe(args.name)
        for line in textwrap.wrap(f"{recipe.name}: {recipe.description}. Source: "
                                  f"{recipe.source}", 98):
            print(f"# {line}")
        print(yaml.safe_dump(recipe.values, sort_keys=False), end="")
        return 0
    recipes = [load_recipe(name) for name in recipe_names()]
    name_width = max(len(r.name) for r in recipes)
    model_width = max(len(r.model) for r in recipes)
    print(f"{'recipe':<{name_width}}  {'model':<{model_width}}  description")
    for r in recipes:
        print(f"{r.name:<{name_width}}  {r.model:<{model_width}}  {r.description}")
    return 0
