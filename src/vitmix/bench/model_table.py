"""The model table: every vitmix model with params, MACs and its SCHEME settings."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import timm

from ..complexity import count_macs, count_params
from ..layers.scheme import SchemeMlp
from .reference import REFERENCE_FIGURES

VITMIX_PATTERNS = ("metaformer_ppaa_*", "schemeformer_*", "groupmixformer_*")


@dataclass
class ModelRow:
    name: str
    params: int
    macs: int
    img_size: int
    expansion: float | None  # E of the SCHEME MLPs, None for dense models
    groups: int | None

    @property
    def reference(self) -> dict[str, float]:
        return REFERENCE_FIGURES.get(self.name, {})


def _natural_key(name: str) -> list:
    # e8 before e16, s12 before s24.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def vitmix_model_names(pattern: str = "*") -> list[str]:
    names = sorted({n for p in VITMIX_PATTERNS for n in timm.list_models(p)}, key=_natural_key)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def describe_model(name: str, img_size: int = 224) -> ModelRow:
    model = timm.create_model(name)
    scheme = next((m for m in model.modules() if isinstance(m, SchemeMlp)), None)
    return ModelRow(
        name=name,
        params=count_params(model),
        macs=count_macs(model, img_size=img_size),
        img_size=img_size,
        expansion=None if scheme is None else scheme.hidden_features / scheme.in_features,
        groups=None if scheme is None else scheme.groups,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown_table(rows: list[ModelRow]) -> str:
    size = rows[0].img_size if rows else 224
    lines = [
        f"| model | params (M) | MACs @{size} (G) | E | G | reference params (M) | "
        f"reference MACs @224 (G) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = r.reference
        lines.append(
            f"| {r.name} | {r.params / 1e6:.2f} | {r.macs / 1e9:.3f} | {_fmt(r.expansion, 'g')} | "
            f"{_fmt(r.groups, 'd')} | {_fmt(ref.get('params'), '.2f')} | "
            f"{_fmt(ref.get('macs'), '.2f')} |"
        )
    return "\n".join(lines)
