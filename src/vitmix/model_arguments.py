"""The model arguments vitmix takes from a file: an allowlist, each argument with its type and
bounds.

A checkpoint's metadata, a run's config.yaml and a ``--config`` YAML file name the arguments a
model is built with, and those go to ``timm.create_model``, which does more than build: given
``pretrained`` it downloads weights, given ``checkpoint_path`` (or a ``pretrained_cfg`` naming
a file) it reads another file. A file must not steer vitmix so, nor make it build a model of
absurd size, nor fail with a traceback on a value of the wrong type: every argument read from a
file is one the registered models take (their constructors' architecture arguments), with a
value of the right type within :mod:`vitmix.limits`, or it is refused in one line naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .layers.checks import BOOL, Rule, number_in, one_of, optional
from .layers.group_mix import ATTN_MODES, IMPLS
from .layers.scheme import CCA_SCHEDULES
from .layers.stems import STEMS
from .layers.token_mixers import TOKEN_MIXERS
from .limits import (
    MAX_CLASSES,
    MAX_DEPTH,
    MAX_DIM,
    MAX_GROUPS,
    MAX_HEADS,
    MAX_IMG_SIZE,
    MAX_IN_CHANS,
    MAX_LAYER_SCALE_INIT,
    MAX_MLP_RATIO,
    MAX_STAGES,
)
from .messages import quoted

__all__ = ["MODEL_ARGUMENTS", "REFUSED_ARGUMENTS", "check_model_kwargs"]


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def int_in(low: int, high: int) -> Rule:
    return Rule(f"an integer from {low} to {high}", lambda v: _is_int_in(v, low, high))


def _positive_number_up_to(high: float) -> Rule:
    return Rule(f"a number in (0, {high:g}]",
                lambda v: number_in(0, high).test(v) and v > 0)


def per_stage(rule: Rule) -> Rule:
    """One value for every stage, or a flat list of one per stage: nothing nested deeper."""
    return Rule(f"{rule.allowed}, or a list of 1 to {MAX_STAGES} of them (one per stage)",
                lambda v: rule.test(v) or (isinstance(v, (list, tuple))
                                           and 1 <= len(v) <= MAX_STAGES
                                           and all(rule.test(x) for x in v)))


def stage_list(rule: Rule) -> Rule:
    """A flat list of one value per stage (depths, dims: each stage has its own)."""
    return Rule(f"a list of 1 to {MAX_STAGES} values (one per stage), each {rule.allowed}",
                lambda v: isinstance(v, (list, tuple)) and 1 <= len(v) <= MAX_STAGES
                and all(rule.test(x) for x in v))


_PIXELS = int_in(1, MAX_IMG_SIZE)
_IMG_SIZE = Rule(f"{_PIXELS.allowed}, or a [height, width] pair of them",
                 lambda v: _PIXELS.test(v) or (isinstance(v, (list, tuple)) and len(v) == 2
                                               and all(_PIXELS.test(x) for x in v)))
_RATE = number_in(0, 1, high_open=True)

# The constructor arguments of vitmix's MetaFormer and GroupMixFormer that describe the
# architecture, and the ones timm's own models share with them (num_classes to global_pool).
# Not device or dtype (where and how to build is the caller's choice), and nothing that names
# a file, a folder, a hub id or a download.
MODEL_ARGUMENTS: dict[str, Rule] = {
    "num_classes": int_in(0, MAX_CLASSES),  # 0: no classifier (timm's convention)
    "in_chans": int_in(1, MAX_IN_CHANS),
    "img_size": _IMG_SIZE,
    "drop_rate": _RATE,
    "proj_drop_rate": _RATE,
    "drop_path_rate": _RATE,
    "global_pool": one_of("avg", ""),
    "depths": stage_list(int_in(1, MAX_DEPTH)),
    "dims": stage_list(int_in(1, MAX_DIM)),
    "token_mixers": per_stage(one_of(*TOKEN_MIXERS)),
    "mlp_ratios": per_stage(_positive_number_up_to(MAX_MLP_RATIO)),
    "mlp_groups": per_stage(int_in(1, MAX_GROUPS)),
    "cca": BOOL,
    "cca_schedule": one_of(*CCA_SCHEDULES),
    "channel_shuffle": BOOL,
    "pos_embed_stage": optional(int_in(0, MAX_STAGES - 1)),
    "head_dim": int_in(1, MAX_DIM),
    "layer_scale_init": number_in(0, MAX_LAYER_SCALE_INIT),
    "stem": one_of(*STEMS),
    "num_heads": int_in(1, MAX_HEADS),
    "qkv_bias": BOOL,
    "attn": one_of(*ATTN_MODES),
    "impl": one_of(*IMPLS),
}

# timm.create_model arguments that reach outside the model, and what each would make vitmix do.
REFUSED_ARGUMENTS = {
    "pretrained": "would download weights",
    "pretrained_cfg": "can name a file to read or a URL to download",
    "pretrained_cfg_overlay": "can name a file to read or a URL to download",
    "checkpoint_path": "names a file to read",
    "cache_dir": "names a folder to write",
}

def check_model_kwargs(kwargs: Any, source: str) -> dict:
    """``kwargs`` as a dict, once every argument passed the allowlist; ValueError in one line
    naming ``source`` (what the arguments came from: "checkpoint run/last.pth"), the argument
    and what it must be."""
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{source}: model_kwargs must be a mapping of argument names to "
                         f"values, got {type(kwargs).__name__}")
    for name, value in kwargs.items():
        if name in REFUSED_ARGUMENTS:
            raise ValueError(f"{source}: the model argument {name!r} is refused: it "
                             f"{REFUSED_ARGUMENTS[name]}; vitmix takes weights only from a "
                             f"checkpoint it was given (--checkpoint) and never lets model "
                             f"arguments reach outside the model")
        rule = MODEL_ARGUMENTS.get(name) if isinstance(name, str) else None
        if rule is None:
            raise ValueError(f"{source}: {quoted(name)} is not a model argument vitmix takes "
                             f"(it takes {', '.join(MODEL_ARGUMENTS)})")
        if not rule.test(value):
            raise ValueError(f"{source}: the model argument {name} must be {rule.allowed}, "
                             f"got {quoted(value)}")
    return dict(kwargs)
