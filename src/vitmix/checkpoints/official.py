"""Loading the authors' released checkpoints into vitmix models.

``from_official(state_dict, arch="groupmixformer")`` renames the keys of the GroupMixFormer
release (github.com/AILab-CVC/GroupMixFormer) to ours; tensors are passed through unchanged, so
a converted model computes what the released one computes. The release's SyncBatchNorm layers
hold ordinary BatchNorm keys and land in our BatchNorm2d layers.

``from_official(state_dict, arch="schemeformer", channel_shuffle=...)`` converts the SCHEME
release's (scheme_vit) MetaFormer checkpoints; :mod:`.scheme_vit` says how, and
:func:`.scheme_vit.convert_schemeformer` also names the model they load into.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .scheme_vit import convert_schemeformer
from .state_dicts import unwrap_state_dict

__all__ = ["ARCHS", "describe_groupmixformer", "from_official", "unwrap_state_dict"]

_BLOCK = r"groupmixformer_backbone\.(?P<stage>\d+)\.gma_stage\.(?P<block>\d+)\."
_OURS_BLOCK = r"stages.\g<stage>.blocks.\g<block>."
# (release prefix, our prefix); each key is a prefix followed by a tensor name such as "weight".
_GROUPMIXFORMER_RULES = [
    (r"conv_stem\.proj(?P<i>[12])\.", r"stem.conv\g<i>."),
    (r"conv_stem\.norm(?P<i>[12])\.", r"stem.norm\g<i>."),
    (r"patch_embed_layers\.(?P<s>\d+)\.proj\.conv1\.", r"stages.\g<s>.downsample.conv.conv_dw."),
    (r"patch_embed_layers\.(?P<s>\d+)\.proj\.pointwise_conv\.",
     r"stages.\g<s>.downsample.conv.conv_pw."),
    (r"patch_embed_layers\.(?P<s>\d+)\.norm\.", r"stages.\g<s>.downsample.norm."),
    (_BLOCK + r"cpe\.proj\.", _OURS_BLOCK + "pos_conv."),
    (_BLOCK + r"(?P<m>norm[12]|mlp\.fc[12])\.", _OURS_BLOCK + r"\g<m>."),
    (_BLOCK + r"att\.(?P<m>qkv|proj)\.", _OURS_BLOCK + r"attn.\g<m>."),
    (_BLOCK + r"att\.aggregator\.norm(?P<i>[0-3])\.",
     _OURS_BLOCK + r"attn.aggregators.\g<i>.norm."),
    (_BLOCK + r"att\.aggregator\.agg(?P<i>[1-3])\.conv1\.",
     _OURS_BLOCK + r"attn.aggregators.\g<i>.conv.conv_dw."),
    (_BLOCK + r"att\.aggregator\.agg(?P<i>[1-3])\.pointwise_conv\.",
     _OURS_BLOCK + r"attn.aggregators.\g<i>.conv.conv_pw."),
    # agg0 is the fifth segment's non-attention branch, not an attended aggregator.
    (_BLOCK + r"att\.aggregator\.agg0\.conv\.conv1\.",
     _OURS_BLOCK + "attn.skip_branch.conv.conv_dw."),
    (_BLOCK + r"att\.aggregator\.agg0\.conv\.pointwise_conv\.",
     _OURS_BLOCK + "attn.skip_branch.conv.conv_pw."),
    (_BLOCK + r"att\.aggregator\.agg0\.norm\.", _OURS_BLOCK + "attn.skip_branch.norm."),
    (_BLOCK + r"att\.crpe\.conv_list\.(?P<i>\d+)\.", _OURS_BLOCK + r"attn.rel_pos.convs.\g<i>."),
    (r"norm4\.", "norm."),
    (r"head\.", "head."),
]
_TENSOR_NAME = r"(?P<tensor>weight|bias|running_mean|running_var|num_batches_tracked)"
_COMPILED = [(re.compile(p + _TENSOR_NAME), r + r"\g<tensor>") for p, r in _GROUPMIXFORMER_RULES]

ARCHS = ("groupmixformer", "schemeformer")


def _rename_groupmixformer(key: str) -> str | None:
    for pattern, replacement in _COMPILED:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    return None


def from_official(state_dict: Mapping, arch: str = "groupmixformer", *,
                  channel_shuffle: bool | None = None) -> dict[str, torch.Tensor]:
    """Convert a released checkpoint's keys (and, where needed, tensors) to the matching vitmix
    model's.

    Args:
        state_dict: the authors' state dict, bare or wrapped as {"model": ...}.
        arch: the model family: "groupmixformer" (the GroupMixFormer release) or
            "schemeformer" (the SCHEME release, scheme_vit).
        channel_shuffle: "schemeformer" only: whether the release's MLPs shuffled their hidden
            channels (True for its shufflegrouporgattnmlpformer_* models); required when its
            MLPs are grouped, since the weights cannot tell.

    Returns a new dict ready for ``load_state_dict(strict=True)`` of the vitmix model of the
    same size (see :func:`describe_groupmixformer`, and
    :func:`.scheme_vit.convert_schemeformer`, which names the model). GroupMixFormer tensors
    pass unchanged; SCHEME's grouped convolutions are reshaped and fc2 is divided by the mixing
    weight, so that vitmix's eval mode computes the release's. Raises ValueError naming the
    keys it does not recognise.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; supported: {', '.join(ARCHS)}")
    if arch == "schemeformer":
        return convert_schemeformer(state_dict, channel_shuffle=channel_shuffle).state
    if channel_shuffle is not None:
        raise ValueError(f"channel_shuffle is an option of arch 'schemeformer', not {arch!r}; "
                         f"leave it out")
    state = unwrap_state_dict(state_dict)
    converted, unknown = {}, []
    for key, value in state.items():
        new_key = _rename_groupmixformer(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        hint = ""
        if any(k.startswith(("stem.", "stages.")) for k in unknown):
            hint = " (it looks converted already: load it directly)"
        shown = ", ".join(unknown[:5])
        if len(unknown) > 5:
            shown += f" and {len(unknown) - 5} more"
        raise ValueError(f"{len(unknown)} keys are not GroupMixFormer release keys{hint}: {shown}")
    return converted


def describe_groupmixformer(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Sizes of a converted GroupMixFormer state dict, and the registered model they match.

    Returns dict(dims, depths, mlp_ratios, num_classes, model) with model None when no
    registered variant has these sizes.
    """
    from ..models.vitmix_groupmixformer import MODEL_SPECS

    dims, depths, ratios = [], [], []
    stage = 0
    while f"stages.{stage}.downsample.norm.weight" in state_dict:
        dim = state_dict[f"stages.{stage}.downsample.norm.weight"].shape[0]
        blocks = {int(m.group(1)) for k in state_dict
                  if (m := re.match(rf"stages\.{stage}\.blocks\.(\d+)\.", k))}
        hidden = state_dict[f"stages.{stage}.blocks.0.mlp.fc1.weight"].shape[0] if blocks else 0
        dims.append(dim)
        depths.append(len(blocks))
        ratios.append(hidden / dim)
        stage += 1
    if not dims:
        raise ValueError("not a GroupMixFormer state dict: no stages.0.downsample.norm.weight")
    head = state_dict.get("head.weight")
    model = None
    for name, spec in MODEL_SPECS.items():
        if spec.get("cca"):
            continue
        if (tuple(spec["dims"]), tuple(spec["depths"]), tuple(spec["mlp_ratios"])) == (
                tuple(dims), tuple(depths), tuple(ratios)):
            model = name
    return dict(dims=dims, depths=depths, mlp_ratios=ratios,
                num_classes=None if head is None else head.shape[0], model=model)
