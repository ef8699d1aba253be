"""A trained dense model becomes a SCHEME model: each dense MLP is copied into a block-diagonal
SchemeMlp through the grouping that keeps the most of its weights (:mod:`.grouping`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import Mlp
from torch import nn

from ..grouping import (
    assign_units,
    block_scores,
    diagonal_membership,
    hidden_index,
    kept_fractions,
    regrouped_channels_bound,
)
from ..layers.checks import check_bool, check_choice, check_positive_int
from ..layers.scheme import SchemeMlp
from ..surgery import SchemifyReport, _dense_weight, copy_blocks, dense_mlp_shape, schemify

__all__ = ["GROUPINGS", "CompressReport", "LayerGrouping", "compress"]

# "search": the exact best grouping of the hidden units; "diagonal": the units in their stored
# order (the plain diagonal copy, the baseline the search is measured against).
GROUPINGS = ("search", "diagonal")


@dataclass
class LayerGrouping:
    """What one MLP kept of its dense weights (fractions of the squared weights)."""

    name: str
    groups: int
    copies: int  # how many groups each dense hidden unit was copied into
    kept_fc1: float
    kept_fc2: float
    diagonal_fc1: float  # what the plain diagonal copy keeps
    diagonal_fc2: float
    # What regrouping the input/output channels too would keep (not applied; None when the
    # MLP's input and output widths differ).
    channels_bound: tuple[float, float] | None = None

    @property
    def kept(self) -> float:
        return (self.kept_fc1 + self.kept_fc2) / 2

    @property
    def diagonal(self) -> float:
        return (self.diagonal_fc1 + self.diagonal_fc2) / 2

    def as_dict(self) -> dict:
        return {"name": self.name, "groups": self.groups, "copies": self.copies,
                "kept": self.kept, "kept_fc1": self.kept_fc1, "kept_fc2": self.kept_fc2,
                "diagonal": self.diagonal,
                "channels_bound": (None if self.channels_bound is None
                                   else sum(self.channels_bound) / 2)}


@dataclass
class CompressReport:
    grouping: str
    layers: list[LayerGrouping] = field(default_factory=list)
    schemify: SchemifyReport | None = None

    @property
    def kept(self) -> float:
        """The mean kept fraction over the layers."""
        return sum(layer.kept for layer in self.layers) / max(len(self.layers), 1)

    def as_dict(self) -> dict:
        s = self.schemify
        return {"grouping": self.grouping, "kept": self.kept,
                "layers": [layer.as_dict() for layer in self.layers],
                "params_before": s.params_before if s else None,
                "params_after": s.params_after if s else None,
                "macs_before": s.macs_before if s else None,
                "macs_after": s.macs_after if s else None}

    def __str__(self) -> str:
        lines = [f"compress ({self.grouping} grouping): {len(self.layers)} MLPs keep "
                 f"{100 * self.kept:.1f}% of their squared weights on average"]
        if self.schemify is not None:
            lines += str(self.schemify).splitlines()[1:]
        for layer in self.layers:
            bound = ("" if layer.channels_bound is None else
                     f", channels regrouped too {50 * sum(layer.channels_bound):.1f}%")
            lines.append(f"  {layer.name}: kept {100 * layer.kept:.1f}% (fc1 "
                         f"{100 * layer.kept_fc1:.1f}%, fc2 {100 * layer.kept_fc2:.1f}%); "
                         f"diagonal copy {100 * layer.diagonal:.1f}%{bound}")
        return "\n".join(lines)


def _membership(w1: torch.Tensor, w2: torch.Tensor, groups: int, copies: int,
                grouping: str) -> torch.Tensor:
    if grouping == "diagonal":
        return diagonal_membership(w1.shape[0], groups, copies)
    return assign_units(block_scores(w1, w2, groups), copies)


def compress(
    model: nn.Module,
    groups: int = 2,
    expansion: float | None = None,
    cca: bool = False,
    cca_schedule: str = "learned",
    grouping: str = "search",
    channels_bound: bool = False,
    img_size: int | tuple[int, int] | None = None,
    measure_macs: bool = True,
) -> tuple[nn.Module, CompressReport]:
    """Make the trained dense ``model`` a SCHEME model, in place: every timm Mlp (Linear or
    1x1 conv) becomes a SchemeMlp with ``groups`` diagonal blocks holding the dense weights the
    ``grouping`` keeps (see :mod:`vitmix.grouping`).

    ``expansion``: the SCHEME hidden width over the input width; None keeps the dense width. A
    wider MLP must be a whole multiple k of the dense one, at most ``groups`` times: each dense
    hidden unit is then copied into k different groups, each copy keeping another block of its
    weights (E=8 at G=4 from a dense E=4: every unit in two groups). ``cca``: add the CCA branch
    (its mixing weight starts at 0.98 for the MLP, and fc2 is divided by it). ``channels_bound``:
    also report what regrouping the residual channels would keep (up to ten more exact searches
    per MLP; `vitmix compress` reports it).

    Returns the model and a report: per MLP, the fraction of squared weight kept, against the
    plain diagonal copy; params and MACs before and after (MACs at ``img_size``, default the
    model's pretrained_cfg input size).
    """
    groups = check_positive_int("groups", groups)
    check_bool("cca", cca)
    check_choice("grouping", grouping, GROUPINGS)
    if expansion is not None and (isinstance(expansion, bool)
                                  or not isinstance(expansion, (int, float)) or expansion <= 0):
        raise ValueError(f"expansion must be a positive number or None, got {expansion!r}")
    dense = {name: m for name, m in model.named_modules()
             if isinstance(m, Mlp) and not isinstance(m, SchemeMlp)}
    plans = {}
    for name, mlp in dense.items():
        in_f, hidden, _, _ = dense_mlp_shape(mlp)
        new_hidden = hidden if expansion is None else int(round(expansion * in_f))
        copies, rest = divmod(new_hidden, hidden)
        if rest or not 1 <= copies <= groups:
            raise ValueError(f"compress copies each dense hidden unit of {name} into 1 to "
                             f"groups={groups} groups, so the hidden width must be 1 to {groups} "
                             f"times the dense {hidden}; expansion={expansion} gives {new_hidden}")
        plans[name] = copies
    model, schemified = schemify(model, expansion=expansion, groups=groups, cca=cca,
                                 cca_schedule=cca_schedule, img_size=img_size,
                                 measure_macs=measure_macs)
    report = CompressReport(grouping=grouping, schemify=schemified)
    for name in schemified.replaced:
        old, new, copies = dense[name], model.get_submodule(name), plans[name]
        w1, w2 = _dense_weight(old.fc1), _dense_weight(old.fc2)
        member = _membership(w1, w2, groups, copies, grouping)
        copy_blocks(new, old, hidden_index(member))
        diagonal = kept_fractions(w1, w2, diagonal_membership(w1.shape[0], groups, copies))
        bound = None
        if channels_bound and w1.shape[1] == w2.shape[0] and groups > 1:
            bound = regrouped_channels_bound(w1, w2, groups, copies)
        report.layers.append(LayerGrouping(name, groups, copies, *kept_fractions(w1, w2, member),
                                           *diagonal, channels_bound=bound))
    return model, report
