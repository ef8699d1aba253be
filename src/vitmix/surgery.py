"""Model surgery: put SCHEME into any timm model (schemify) and strip it for inference (deploy)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from timm.layers import Mlp
from torch import nn

from .accelerate import accelerate as accelerate_model
from .complexity import count_macs, count_params
from .grouping import assign_units, block_scores, hidden_index
from .layers.scheme import SchemeMlp

__all__ = ["DeployReport", "SchemifyReport", "block_assignment", "copy_blocks", "deploy",
           "dense_mlp_shape", "schemify"]


@dataclass
class SchemifyReport:
    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # module name -> why
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    img_size: tuple[int, int] | None = None

    def __str__(self) -> str:
        lines = [f"schemify: replaced {len(self.replaced)} MLPs, skipped {len(self.skipped)}",
                 f"  params {self.params_before / 1e6:.2f}M -> {self.params_after / 1e6:.2f}M"]
        if self.macs_before is not None:
            lines.append(f"  MACs @{self.img_size} {self.macs_before / 1e9:.3f}G -> "
                         f"{self.macs_after / 1e9:.3f}G")
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


@dataclass
class DeployReport:
    cca_weights: dict[str, float] = field(default_factory=dict)  # dropped (1 - a) per module
    params_before: int = 0
    params_after: int = 0

    @property
    def max_cca_weight(self) -> float:
        return max(self.cca_weights.values(), default=0.0)

    def __str__(self) -> str:
        return (f"deploy: folded {len(self.cca_weights)} SchemeMlp, largest CCA weight dropped "
                f"{self.max_cca_weight:.3g}, params {self.params_before / 1e6:.3f}M -> "
                f"{self.params_after / 1e6:.3f}M")


def dense_mlp_shape(mlp: nn.Module) -> tuple[int, int, int, bool]:
    """(in, hidden, out, channels_first) of a timm Mlp on Linear or 1x1-conv layers.

    Raises ValueError for an MLP that SCHEME cannot stand in for.
    """
    fc1, fc2 = mlp.fc1, mlp.fc2
    if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
        return fc1.in_features, fc1.out_features, fc2.out_features, False
    if isinstance(fc1, nn.Conv2d) and isinstance(fc2, nn.Conv2d):
        for conv in (fc1, fc2):
            if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1):
                raise ValueError(
                    f"only 1x1, ungrouped, stride-1 conv MLPs can be replaced, got {conv}"
                )
        return fc1.in_channels, fc1.out_channels, fc2.out_channels, True
    raise ValueError(f"fc1/fc2 must be Linear or 1x1 Conv2d, got {type(fc1).__name__}/"
                     f"{type(fc2).__name__}")


def _default_img_size(model: nn.Module) -> tuple[int, int] | None:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size")
    return tuple(size[-2:]) if size else None


def _measure_macs(model: nn.Module, img_size, in_chans: int) -> int | None:
    try:
        return count_macs(model, img_size=img_size, in_chans=in_chans)
    except Exception:  # a model that cannot run at that size: report no MACs, change nothing
        return None


def block_assignment(w1: torch.Tensor, w2: torch.Tensor, groups: int) -> torch.Tensor:
    """A permutation of the hidden units that keeps the most dense weight on the block diagonal.

    Hidden units are interchangeable (fc1 rows and fc2 columns move together), so the units are
    split into ``groups`` groups of h/G by the exact best grouping of
    :func:`vitmix.grouping.assign_units`: each unit keeps the part of its fc1 row that
    reads its group's input block and of its fc2 column that writes its output block.
    Returns ``perm`` with new hidden unit i = old hidden unit perm[i].
    """
    return hidden_index(assign_units(block_scores(w1, w2, groups)))


def _dense_weight(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach()
    return w.reshape(w.shape[0], w.shape[1])  # (out, in), also for 1x1 convs


@torch.no_grad()
def copy_blocks(new: SchemeMlp, old: nn.Module, index: torch.Tensor) -> None:
    """Fill ``new``'s diagonal blocks from the dense MLP ``old``: SCHEME hidden unit i is dense
    unit ``index[i]`` (grouped: the first hidden/G units form group 0, ...). With CCA, the MLP
    branch starts dominant (a = 0.98, so the dense function is kept from step one) and fc2 is
    divided by a, so that a * BD-MLP starts as the copied blocks."""
    if new.mix_logits is not None:
        new.mix_logits.copy_(torch.tensor([2.0, -2.0]))
    w1, w2 = _dense_weight(old.fc1)[index], _dense_weight(old.fc2)[:, index]
    g = new.groups
    i1, h, o2 = new.in_features // g, new.hidden_features // g, new.out_features // g
    scale = 1.0 / float(new.mix_weights()[0]) if new.has_cca else 1.0
    for k in range(g):
        new.fc1.weight[k].copy_(w1[k * h:(k + 1) * h, k * i1:(k + 1) * i1])
        new.fc2.weight[k].copy_(w2[k * o2:(k + 1) * o2, k * h:(k + 1) * h] * scale)
    if new.fc1.bias is not None:
        new.fc1.bias.copy_(old.fc1.bias[index])
    if new.fc2.bias is not None:
        new.fc2.bias.copy_(old.fc2.bias * scale)


def _init_from_dense(new: SchemeMlp, old: nn.Module) -> None:
    copy_blocks(new, old, block_assignment(_dense_weight(old.fc1), _dense_weight(old.fc2),
                                           new.groups))


def _replacement(name: str, mlp: nn.Module, expansion: float | None, groups: int, cca: bool,
                 cca_schedule: str, init_from_dense: bool) -> SchemeMlp:
    in_f, hidden_old, out_f, channels_first = dense_mlp_shape(mlp)
    hidden = hidden_old if expansion is None else int(round(expansion * in_f))
    if init_from_dense and hidden != hidden_old:
        raise ValueError(
            f"init_from_dense copies the dense weights, so the hidden width must stay "
            f"{hidden_old} in {name}; got expansion={expansion} (hidden {hidden}). "
            f"Pass expansion=None"
        )
    for what, width in (("input width", in_f), ("hidden width", hidden), ("output width", out_f)):
        if width % groups:
            raise ValueError(f"groups={groups} does not divide the {what} {width} of {name}")
    ref = mlp.fc1.weight
    new = SchemeMlp(
        in_f, hidden, out_f,
        act_layer=lambda: copy.deepcopy(mlp.act),
        drop=(mlp.drop1.p, mlp.drop2.p),
        bias=(mlp.fc1.bias is not None, mlp.fc2.bias is not None),
        groups=groups, cca=cca and in_f == out_f, cca_schedule=cca_schedule,
        channels_first=channels_first,
    ).to(device=ref.device, dtype=ref.dtype)
    if init_from_dense:
        _init_from_dense(new, mlp)
    return new.train(mlp.training)


def schemify(
    model: nn.Module,
    expansion: float | None = None,
    groups: int = 4,
    cca: bool = True,
    cca_schedule: str = "learned",
    init_from_dense: bool = False,
    img_size: int | tuple[int, int] | None = None,
    measure_macs: bool = True,
) -> tuple[nn.Module, SchemifyReport]:
    """Replace every timm Mlp (Linear or 1x1-conv) in ``model`` by a SchemeMlp, in place.

    The input and output widths stay; the hidden width becomes ``expansion * in`` (or stays, when
    expansion is None). ``init_from_dense=True`` copies the block-diagonal part of the dense
    weights after ordering the hidden units to keep as much weight as possible on the blocks.
    Returns the model and a report with params and MACs before and after; MACs are counted at
    ``img_size`` (default: the model's pretrained_cfg input size).
    """
    if groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups}")
    if expansion is not None and expansion <= 0:
        raise ValueError(f"expansion must be positive or None, got {expansion}")
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, Mlp) and not isinstance(m, SchemeMlp)]
    report = SchemifyReport(params_before=count_params(model))
    if img_size is None:
        img_size = _default_img_size(model)
    elif isinstance(img_size, int):
        img_size = (img_size, img_size)
    report.img_size = img_size
    in_chans = getattr(model, "in_chans", 3)
    if measure_macs and img_size is not None:
        report.macs_before = _measure_macs(model, img_size, in_chans)

    # Build every replacement before touching the model, so a bad argument changes nothing.
    replacements = []
    for name, mlp in targets:
        if not isinstance(mlp.norm, nn.Identity):
            report.skipped[name] = f"hidden norm {type(mlp.norm).__name__} has no SCHEME form"
            continue
        replacements.append((name, _replacement(name, mlp, expansion, groups, cca, cca_schedule,
                                                init_from_dense)))
    for name, new in replacements:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        report.replaced.append(name)

    report.params_after = count_params(model)
    if report.macs_before is not None:
        report.macs_after = _measure_macs(model, img_size, in_chans)
    return model, report


def deploy(model: nn.Module, accelerate: bool = True) -> DeployReport:
    """Make ``model`` its inference form, in place: every SchemeMlp folds a into fc2 and drops
    its CCA branch and mixing logits. The model is left in eval mode and computes what it
    computed in eval mode before. ``accelerate``: also give it the fused CPU inference kernels
    (:func:`vitmix.accelerate.accelerate`; same function, same state dict).
    """
    report = DeployReport(params_before=count_params(model))
    for name, module in model.named_modules():
        if isinstance(module, SchemeMlp) and module.has_cca:
            report.cca_weights[name] = module.fuse_mixing()
    report.params_after = count_params(model)
    model.eval()
    if accelerate:
        accelerate_model(model)
    return report
