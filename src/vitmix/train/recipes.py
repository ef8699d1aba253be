"""Shipped training recipes: named sets of TrainConfig values with the source of each.

A recipe is a YAML file in the package's ``recipes`` folder (package data, so an installed wheel
carries it): a one-line ``description``, the ``source`` of its values, and ``config``, the
TrainConfig keys it sets. A file may ``extends`` one shared base (a file whose name starts with
an underscore, never a recipe itself): the recipe is the base's keys with its own laid over
them, and its source the base's and its own together. Nothing else is inherited, so what a
recipe sets is two files at most.

A recipe sets what its authors trained with, never the data: ``data`` is the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from ..structured_text import load_yaml
from .config import TrainConfig, _ConfigLoader

__all__ = ["Recipe", "load_recipe", "recipe_config", "recipe_names"]

_FILE_KEYS = {"extends", "description", "source", "config"}
_NOT_IN_A_RECIPE = ("data", "out_dir", "recipe")  # the user's, and the record of the recipe


def _folder():
    return resources.files("vitmix") / "recipes"


def recipe_names() -> list[str]:
    """The shipped recipes' names, sorted."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _folder().iterdir()
                  if entry.name.endswith(".yaml") and not entry.name.startswith("_"))


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str  # one line
    source: str  # where its values come from
    values: dict  # TrainConfig keys

    @property
    def model(self) -> str:
        return self.values["model"]

    def config(self, overrides: dict) -> TrainConfig:
        """The recipe's TrainConfig with ``overrides`` (a --config file's keys, then flags, or
        Python keywords) laid over it; they must name the data."""
        if "data" not in overrides:
            raise ValueError(f"recipe {self.name!r} sets how to train, not on what: give the "
                             f"data with --data PATH (data=... in Python), e.g. an ImageNet-1K "
                             f"tree with train/ and val/, or webdataset shards")
        return TrainConfig.from_dict({**self.values, **overrides, "recipe": self.name})


def _read(name: str) -> dict:
    """One recipe file's mapping, checked for the keys a recipe file may hold."""
    path = _folder() / f"{name}.yaml"
    values = load_yaml(path.read_text(), f"recipe file {name}.yaml", _ConfigLoader)
    if not isinstance(values, dict) or not isinstance(values.get("config"), dict):
        raise ValueError(f"recipe file {name}.yaml must map 'config' to TrainConfig keys")
    unknown = sorted(set(values) - _FILE_KEYS)
    if unknown:
        raise ValueError(f"recipe file {name}.yaml has unknown keys {unknown}; a recipe file "
                         f"holds {sorted(_FILE_KEYS)}")
    TrainConfig.check_keys(values["config"])
    barred = [key for key in _NOT_IN_A_RECIPE if key in values["config"]]
    if barred:
        raise ValueError(f"recipe file {name}.yaml sets {barred}: a recipe leaves them to the "
                         f"user")
    return values


def load_recipe(name: str) -> Recipe:
    """The shipped recipe ``name``; one line naming the known recipes when there is none."""
    known = recipe_names()
    if name not in known:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {', '.join(known)} "
                         f"(`vitmix recipes` describes them)")
    own = _read(name)
    values, sources = dict(own["config"]), [own["source"]]  # its own keys first: the model
    if own.get("extends"):
        base = _read(own["extends"])
        if base.get("extends"):
            raise ValueError(f"recipe base {own['extends']}.yaml extends another; a base "
                             f"stands alone")
        values.update((k, v) for k, v in base["config"].items() if k not in values)
        sources.insert(0, base["source"])
    return Recipe(name, own["description"], "; ".join(sources), values)


def recipe_config(name: str, **overrides) -> TrainConfig:
    """``TrainConfig`` of recipe ``name`` with ``overrides`` (``data`` among them), the recipe's
    name recorded in its ``recipe`` field: the Python form of ``vitmix train --recipe NAME``."""
    return load_recipe(name).config(overrides)
