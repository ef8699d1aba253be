"""accelerate() and restore(): swap the accelerated twins in and out of a model, in place."""

from __future__ import annotations

from timm.layers import Mlp
from torch import nn

from ..layers.group_mix import GroupMixAttention
from ..layers.scheme import SchemeMlp
from ..layers.token_mixers import SelfAttention
from ..models.vitmix_groupmixformer import GroupMixBlock
from ..models.vitmix_metaformer import MetaFormerBlock
from .modules import (
    AcceleratedGroupMixAttention,
    AcceleratedGroupMixBlock,
    AcceleratedLinear,
    AcceleratedMetaFormerBlock,
    AcceleratedMlp,
    AcceleratedSchemeMlp,
    forget_derived,
)

# Plain class -> its twin, for modules whose exact class is the plain one (a user's subclass
# may compute something else and is left alone).
_TWINS: dict[type, type] = {
    MetaFormerBlock: AcceleratedMetaFormerBlock,
    GroupMixBlock: AcceleratedGroupMixBlock,
    GroupMixAttention: AcceleratedGroupMixAttention,
}
_PLAIN = {twin: plain for plain, twin in _TWINS.items()}
_PLAIN.update({AcceleratedMlp: Mlp, AcceleratedSchemeMlp: SchemeMlp,
               AcceleratedLinear: nn.Linear})
_MLP_TWINS = (AcceleratedMlp, AcceleratedSchemeMlp)
# The linear layers of these attention modules run faster through oneDNN.
_ATTENTION = (SelfAttention, GroupMixAttention)


def _twin_of(module: nn.Module, parent: nn.Module | None) -> type | None:
    kind = type(module)
    if kind in _TWINS:
        return _TWINS[kind]
    if AcceleratedMlp.accepts(module):
        return AcceleratedMlp
    if AcceleratedSchemeMlp.accepts(module):
        return AcceleratedSchemeMlp
    if kind is nn.Linear and isinstance(parent, _ATTENTION):
        return AcceleratedLinear
    return None


def accelerate(model: nn.Module, lean_training: bool = True, store_hidden: bool = False,
               lean_conv_mlp: bool = False) -> nn.Module:
    """Give ``model`` vitmix's fast paths, in place, and return it.

    The modules that have an accelerated twin become it: the same parameters, buffers,
    state-dict keys and hooks, and the same function. With the switch on (``VITMIX_ACCELERATE``,
    :func:`set_enabled`) the twins take the fused kernels in eager float32 CPU inference and
    the memory-lean training functions (MLPs, CCA, linear layers) when autograd records in eager
    mode, on any device; torch.compile, export and FLOP counting see the plain forward.
    ``lean_training=False`` keeps the fused inference kernels only and trains through the plain
    layers (faster where the lean functions were measured slower: docs/performance.md).
    ``store_hidden=True`` makes the MLPs keep their hidden activation for backward instead of
    recomputing it. timm's dense Mlp on 1x1 convolutions trains through oneDNN's convolutions,
    which were faster than the lean functions here; ``lean_conv_mlp=True`` sends it through
    the lean functions too. :func:`restore` undoes it all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate expects a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("lean_training", lean_training), ("store_hidden", store_hidden),
                        ("lean_conv_mlp", lean_conv_mlp)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    for module in model.modules():
        twin = _twin_of(module, parents.get(id(module)))
        if twin is not None:
            module.__class__ = twin
            if twin in _MLP_TWINS or twin is AcceleratedLinear:
                module.lean_training = lean_training
            if twin in _MLP_TWINS:
                module.store_hidden = store_hidden
            if twin is AcceleratedMlp:
                module.lean_conv = lean_conv_mlp
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`accelerate`, in place: every twin becomes its plain class again."""
    for module in model.modules():
        plain = _PLAIN.get(type(module))
        if plain is not None:
            module.__class__ = plain
            forget_derived(module)
            module.__dict__.pop("lean_training", None)
            module.__dict__.pop("store_hidden", None)
            module.__dict__.pop("lean_conv", None)
    return model


def accelerated_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that run as accelerated twins."""
    return [name for name, module in model.named_modules() if type(module) in _PLAIN]
