"""The authors' SCHEME checkpoints (their release scheme_vit, schemeformer.py and mlp_heads.py)
as vitmix MetaFormer models.

The release keeps its network as one list, ``network.{i}``: the blocks of stage 0, a
downsampling convolution, the blocks of stage 1, and so on, with the position embedding as an
entry of its own before the stage it is added to; ``patch_embed.proj`` is the stem. Its MLPs are
1x1 convolutions: dense (timm's Mlp here, the same tensors), or grouped with a CCA branch mixed
by two logits ``weight_soft`` (SchemeMlp here: the grouped weight (out, in/G, 1, 1) is vitmix's
block-diagonal (G, out/G, in/G), the logits are ``mix_logits``).

The shapes tell the widths, depths, E and G of every stage, which stages attend (those with
``token_mixer.qkv``; the others pool), CCA or not, and the stage and size of the position
embedding. They cannot tell whether the MLPs shuffled their hidden channels
(``ShuffleGroupLiteAttMlp``, in the release's ``shufflegrouporgattnmlpformer_*``) or not
(``GroupLiteAttMlp``): the caller says so, and must where the MLPs are grouped.

The function: the release's eval mode returns MLP(x), without its mixing weight
a = softmax(weight_soft)[0]; vitmix's eval mode returns a * MLP(x). fc2's weight and bias are
divided by a here, so vitmix's eval mode (and vitmix.deploy, which multiplies a back in)
computes the release's eval function. The logits stay the authors', so training continues from
their mixing weights; training mode then computes MLP(x) + (1 - a) * CCA(x), with vitmix's
true-covariance CCA where the release builds the covariance from a reshape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import timm
import torch
from torch import nn

from ..factory import build_model
from ..models.vitmix_metaformer import ARCHS as METAFORMER_ARCHS
from .state_dicts import unwrap_state_dict

__all__ = ["SchemeformerImport", "convert_schemeformer"]

# A block's tensors, ours -> the release's name for them.
_RELEASE_BLOCK_NAMES = {
    "ls1.gamma": "layer_scale_1",
    "ls2.gamma": "layer_scale_2",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "token_mixer.qkv.weight": "token_mixer.qkv.weight",
    "token_mixer.proj.weight": "token_mixer.proj.weight",
    "token_mixer.proj.bias": "token_mixer.proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.mix_logits": "mlp.weight_soft",
}
# The cosine CCA schedule's progress: a buffer of ours the release has no counterpart of.
_OURS_ONLY = "mlp.progress"

_BLOCK_KEY = re.compile(r"network\.(\d+)\.(\d+)\.(.+)")
_DOWNSAMPLE_KEY = re.compile(r"network\.(\d+)\.proj\.(?:weight|bias)")
_POS_EMBED_KEY = re.compile(r"network\.(\d+)\.pos_embed")
_OUR_BLOCK_KEY = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)")
_OUR_DOWNSAMPLE_KEY = re.compile(r"stages\.(\d+)\.downsample\.(weight|bias)")
_OUR_POS_EMBED_KEY = re.compile(r"stages\.(\d+)\.pos_embed")

# The release's MetaFormer: 7x7 stride-4 stem, then each stage halves the map.
_STEM_STRIDE = 4
_DEFAULT_IMG_SIZE = 224


@dataclass(frozen=True)
class _Stage:
    """Where a stage's entries sit in the release's ``network`` list."""

    blocks: int
    depth: int
    downsample: int | None
    pos_embed: int | None


@dataclass(frozen=True)
class SchemeformerImport:
    """A converted scheme_vit checkpoint and the vitmix model it loads into.

    ``state`` has vitmix's keys and loads with ``strict=True`` into
    ``timm.create_model(model, **model_kwargs)`` (:meth:`build` does both). ``registered`` says
    whether ``model`` is the architecture itself (the kwargs then only say classes, channels
    and image size) or a base whose architecture the kwargs replace. ``mixing_weights`` holds
    the a = softmax(weight_soft)[0] of every MLP with CCA, by module name: fc2 was divided by
    it.
    """

    state: dict[str, torch.Tensor]
    model: str
    model_kwargs: dict
    registered: bool
    mixing_weights: dict[str, float]

    def build(self) -> nn.Module:
        model = build_model(self.model, self.model_kwargs)
        model.load_state_dict(self.state, strict=True)
        return model


def _not_a_release_state_dict(state: Mapping) -> ValueError:
    example = next(iter(state))
    if any(k.startswith(("stages.", "stem.")) for k in state):
        hint = "; it looks converted already: load it directly"
    elif any(k.startswith("groupmixformer_backbone.") for k in state):
        hint = "; it looks like a GroupMixFormer release checkpoint: use arch 'groupmixformer'"
    else:
        hint = ""
    return ValueError(f"not a scheme_vit SCHEMEformer state dict: no network.{{i}} keys "
                      f"(found e.g. {example}){hint}")


def _read_layout(state: Mapping[str, torch.Tensor]) -> list[_Stage]:
    """The stages of the release's ``network`` list, checked to be in vitmix's order: blocks,
    then (downsample, optional position embedding, blocks) for every further stage."""
    kinds: dict[int, str] = {}
    block_numbers: dict[int, set[int]] = {}
    for key in state:
        if m := _BLOCK_KEY.fullmatch(key):
            kind = "blocks"
            block_numbers.setdefault(int(m[1]), set()).add(int(m[2]))
        elif m := _DOWNSAMPLE_KEY.fullmatch(key):
            kind = "downsample"
        elif m := _POS_EMBED_KEY.fullmatch(key):
            kind = "position embedding"
        else:
            continue  # not a network entry: checked by name with the rest
        index = int(m[1])
        if kinds.setdefault(index, kind) != kind:
            raise ValueError(f"network.{index} holds both a {kinds[index]} and a {kind} "
                             f"({key}); expected one of them")
    if not kinds:
        raise _not_a_release_state_dict(state)
    last = max(kinds)
    absent = sorted(set(range(last + 1)) - set(kinds))
    if absent:
        raise ValueError(f"network.{absent[0]} is missing: the network list runs from network.0 "
                         f"to network.{last}")
    stages: list[_Stage] = []
    downsample = pos_embed = None
    for index in range(last + 1):
        kind = kinds[index]
        if kind == "blocks":
            if stages and downsample is None:
                raise ValueError(f"network.{index} (blocks) follows the blocks of network."
                                 f"{stages[-1].blocks} without a downsample; vitmix's MetaFormer "
                                 f"downsamples before every stage")
            numbers = block_numbers[index]
            if numbers != set(range(len(numbers))):
                raise ValueError(f"network.{index} holds blocks {sorted(numbers)}; expected "
                                 f"blocks numbered from 0 without gaps")
            stages.append(_Stage(index, len(numbers), downsample, pos_embed))
            downsample = pos_embed = None
        elif kind == "downsample":
            if not stages or downsample is not None:
                raise ValueError(f"network.{index} is a downsample where blocks were expected; "
                                 f"the network list starts with blocks and alternates "
                                 f"downsamples and blocks")
            downsample = index
        else:
            if pos_embed is not None or any(s.pos_embed is not None for s in stages):
                raise ValueError(f"network.{index} is a second position embedding; vitmix's "
                                 f"MetaFormer adds one")
            pos_embed = index
    if downsample is not None or pos_embed is not None:
        raise ValueError(f"network.{last} is a {kinds[last]} after the last stage's blocks; "
                         f"expected the network list to end with blocks")
    return stages


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"the checkpoint has no {key}, which every scheme_vit SCHEMEformer "
                         f"checkpoint holds")
    return tuple(state[key].shape)


def _read_mlp(state: Mapping[str, torch.Tensor], prefix: str, dim: int) -> tuple[int, int]:
    """(hidden width, groups) of the MLP whose keys start with ``prefix``."""
    w1 = _shape(state, prefix + "fc1.weight")
    if len(w1) != 4 or w1[2:] != (1, 1) or w1[1] < 1 or dim % w1[1]:
        raise ValueError(f"{prefix}fc1.weight has shape {w1}; expected a 1x1 convolution "
                         f"(hidden, {dim} / G, 1, 1) for {dim} channels in G groups")
    hidden, groups = w1[0], dim // w1[1]
    w2 = _shape(state, prefix + "fc2.weight")
    expected = (dim, hidden // groups, 1, 1)
    if hidden % groups or w2 != expected:
        raise ValueError(f"{prefix}fc2.weight has shape {w2}; fc1's {w1} makes {groups} groups "
                         f"of a {hidden}-wide hidden layer, so expected {expected}")
    if int(hidden / dim * dim) != hidden:
        raise ValueError(f"{prefix}fc1.weight makes {hidden} hidden channels from {dim}, a "
                         f"ratio vitmix's MetaFormer cannot build (it makes int(ratio * width))")
    return hidden, groups


def _read_architecture(state: Mapping[str, torch.Tensor], stages: list[_Stage]) -> dict:
    """MetaFormer arguments from the shapes: each stage is read from its first block (the
    strict check after conversion holds every other block to it)."""
    dims, ratios, groups, mixers = [], [], [], []
    for stage in stages:
        block = f"network.{stage.blocks}.0."
        (dim,) = _shape(state, block + "norm1.weight")
        hidden, g = _read_mlp(state, block + "mlp.", dim)
        dims.append(dim)
        ratios.append(hidden // dim if hidden % dim == 0 else hidden / dim)
        groups.append(g)
        mixers.append("attn" if block + "token_mixer.qkv.weight" in state else "pool")
    pos_stage = next((k for k, s in enumerate(stages) if s.pos_embed is not None), None)
    img_size: int | list[int] = _DEFAULT_IMG_SIZE
    if pos_stage is not None:
        pos_shape = _shape(state, f"network.{stages[pos_stage].pos_embed}.pos_embed")
        if len(pos_shape) != 4:
            raise ValueError(f"network.{stages[pos_stage].pos_embed}.pos_embed has shape "
                             f"{pos_shape}; expected (1, channels, height, width)")
        # The release adds the embedding without resizing: it was trained at this size.
        stride = _STEM_STRIDE * 2**pos_stage
        height, width = pos_shape[2] * stride, pos_shape[3] * stride
        img_size = height if height == width else [height, width]
    return dict(
        depths=[s.depth for s in stages], dims=dims, token_mixers=mixers, mlp_ratios=ratios,
        mlp_groups=groups, cca=f"network.{stages[0].blocks}.0.mlp.weight_soft" in state,
        pos_embed_stage=pos_stage, img_size=img_size,
        in_chans=_shape(state, "patch_embed.proj.weight")[1],
        num_classes=_shape(state, "head.weight")[0] if "head.weight" in state else 0,
    )


def _check_shuffle(channel_shuffle: bool | None, architecture: dict,
                   stages: list[_Stage]) -> bool:
    if channel_shuffle is not None and not isinstance(channel_shuffle, bool):
        raise ValueError(f"channel_shuffle must be True, False or None, got {channel_shuffle!r}")
    grouped = [k for k, g in enumerate(architecture["mlp_groups"]) if g > 1]
    if grouped and channel_shuffle is None:
        k = grouped[0]
        raise ValueError(
            f"network.{stages[k].blocks}.0.mlp.fc1.weight is a grouped convolution "
            f"({architecture['mlp_groups'][k]} groups), and the weights cannot tell whether "
            f"the hidden channels were shuffled: pass channel_shuffle=True (--channel-shuffle) "
            f"for the release's shufflegrouporgattnmlpformer_* models (ShuffleGroupLiteAttMlp), "
            f"channel_shuffle=False (--no-channel-shuffle) for GroupLiteAttMlp")
    # With one group the shuffle is the identity: the model says what it computes.
    return bool(channel_shuffle) and bool(grouped)


def _meta_model(name: str, kwargs: dict) -> nn.Module:
    try:
        return build_model(name, dict(kwargs, device="meta"))
    except ValueError as err:
        raise ValueError(f"the checkpoint's sizes give a model vitmix cannot build: {err}"
                         ) from None


def _signature(model: nn.Module) -> tuple[str, dict]:
    # The module tree (mixer kinds, groups, CCA, shuffle) and every tensor's shape.
    return repr(model), {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _choose_model(architecture: dict) -> tuple[str, dict, bool, nn.Module]:
    """The registered name of this architecture when there is one, else a base MetaFormer name
    with every architecture argument; returns (name, kwargs, registered, model on "meta")."""
    depths, dims = architecture["depths"], architecture["dims"]
    arch = next((a for a, (d, w, _) in METAFORMER_ARCHS.items()
                 if (list(d), list(w)) == (depths, dims)), None)
    base = f"metaformer_ppaa_{arch or 's12'}"
    full = _meta_model(base, architecture)
    ratios, groups = set(architecture["mlp_ratios"]), set(architecture["mlp_groups"])
    if arch is not None and len(ratios) == 1 and len(groups) == 1:
        (e,), (g,) = ratios, groups
        if architecture["cca"] or g > 1:
            name = f"schemeformer_ppaa_{arch}_e{e}_g{g}"
            name += "_shuffle" if architecture["channel_shuffle"] else ""
        else:
            name = base
        size_kwargs = {k: architecture[k] for k in ("num_classes", "in_chans", "img_size")}
        if timm.is_model(name):
            candidate = _meta_model(name, size_kwargs)
            if _signature(candidate) == _signature(full):
                return name, size_kwargs, True, candidate
    return base, dict(architecture), False, full


def _release_key(key: str, stages: list[_Stage]) -> str | None:
    """The release's name for our tensor ``key`` (None for a buffer of ours alone)."""
    if m := _OUR_BLOCK_KEY.fullmatch(key):
        stage, block, rest = int(m[1]), m[2], m[3]
        if rest == _OURS_ONLY:
            return None
        return f"network.{stages[stage].blocks}.{block}.{_RELEASE_BLOCK_NAMES[rest]}"
    if m := _OUR_DOWNSAMPLE_KEY.fullmatch(key):
        stage = int(m[1])
        if stage == 0:
            return f"patch_embed.proj.{m[2]}"
        return f"network.{stages[stage].downsample}.proj.{m[2]}"
    if m := _OUR_POS_EMBED_KEY.fullmatch(key):
        return f"network.{stages[int(m[1])].pos_embed}.pos_embed"
    return key  # norm.*, head.*: the same names


def _release_shape(key: str, shape: torch.Size) -> tuple[int, ...]:
    """Our block-diagonal (G, out/G, in/G) weights are the release's grouped 1x1 convolutions."""
    if key.endswith(("mlp.fc1.weight", "mlp.fc2.weight")) and len(shape) == 3:
        groups, out_per_group, in_per_group = shape
        return (groups * out_per_group, in_per_group, 1, 1)
    return tuple(shape)


def _examples(kind: str, items: list[str]) -> str:
    return f"{len(items)} {kind} (e.g. {items[0]})"


def _take_tensors(state: Mapping[str, torch.Tensor], stages: list[_Stage],
                  expected: Mapping[str, torch.Tensor], description: str
                  ) -> dict[str, torch.Tensor]:
    """Every tensor the model needs, fetched by the release's name and reshaped to ours; one
    ValueError naming what is missing, left over or misshapen."""
    converted, used, missing, misshapen = {}, set(), [], []
    for key, target in expected.items():
        theirs = _release_key(key, stages)
        if theirs is None:
            converted[key] = torch.zeros(target.shape)
            continue
        if theirs not in state:
            missing.append(theirs)
            continue
        used.add(theirs)
        tensor, want = state[theirs], _release_shape(key, target.shape)
        if tuple(tensor.shape) != want:
            misshapen.append(f"{theirs} {tuple(tensor.shape)}, expected {want}")
            continue
        converted[key] = tensor.reshape(target.shape)
    unexpected = sorted(set(state) - used)
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(_examples("missing keys", missing))
        if unexpected:
            parts.append(_examples("unexpected keys", unexpected))
        if misshapen:
            parts.append(_examples("shape mismatches", misshapen))
        raise ValueError(f"the checkpoint does not fit the {description} that its first "
                         f"blocks describe (each block must match its stage's first block): "
                         + "; ".join(parts))
    return converted


def _fold_eval_scaling(converted: dict[str, torch.Tensor]) -> dict[str, float]:
    """Divide fc2 by a wherever there are mixing logits, so that our eval output a * MLP(x) is
    the release's MLP(x); returns a by MLP name."""
    mixing = {}
    for key in [k for k in converted if k.endswith(".mlp.mix_logits")]:
        mlp = key.removesuffix(".mix_logits")
        a = torch.softmax(converted[key].double(), dim=0)[0]
        if not (torch.isfinite(a) and a > 0):
            raise ValueError(f"the mixing logits of {mlp} give the MLP a weight of {float(a)}; "
                             f"the release's eval function cannot be written as a * MLP")
        for name in ("fc2.weight", "fc2.bias"):
            tensor = converted.get(f"{mlp}.{name}")
            if tensor is not None:
                converted[f"{mlp}.{name}"] = (tensor.double() / a).to(tensor.dtype)
        mixing[mlp] = float(a)
    return mixing


def convert_schemeformer(state_dict: Mapping, channel_shuffle: bool | None = None
                         ) -> SchemeformerImport:
    """A scheme_vit checkpoint as a vitmix MetaFormer: converted tensors, model and arguments.

    Args:
        state_dict: the authors' state dict, bare or wrapped as {"model": ...} or
            {"state_dict": ...}, with or without DDP's "module." prefix.
        channel_shuffle: whether the release's MLPs shuffled their hidden channels (True for
            ``shufflegrouporgattnmlpformer_*``, whose MLP is ``ShuffleGroupLiteAttMlp``; False
            for ``GroupLiteAttMlp``). Required when the MLPs are grouped, ignored when they
            are dense.

    The converted model's eval mode computes the release's eval function (fc2 divided by the
    mixing weight a; see the module's docstring). Raises one ValueError naming the first thing
    that does not fit, before any tensor is converted.
    """
    state = unwrap_state_dict(state_dict)
    stages = _read_layout(state)
    architecture = _read_architecture(state, stages)
    architecture["channel_shuffle"] = _check_shuffle(channel_shuffle, architecture, stages)
    name, kwargs, registered, model = _choose_model(architecture)
    description = name if registered else f"MetaFormer ({name} with {kwargs})"
    converted = _take_tensors(state, stages, model.state_dict(), description)
    mixing = _fold_eval_scaling(converted)
    return SchemeformerImport(converted, name, kwargs, registered, mixing)
