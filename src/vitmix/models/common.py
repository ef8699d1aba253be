"""What the vitmix model families share: argument and input checks, the channel mixer, and
timm's classifier and feature conventions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from timm.layers import Mlp
from torch import nn

from ..layers.checks import (
    check_bool,
    check_choice,
    check_per_stage,
    check_positive_int,
    check_positive_number,
)
from ..layers.scheme import CCA_SCHEDULES, SchemeMlp
from ..layers.tracing import shape_text

# Both families divide the map by 4 in the stem and halve it three times: inputs must be
# multiples of 32.
INPUT_MULTIPLE = 32


def check_img_size(img_size: int | Sequence[int], multiple: int = INPUT_MULTIPLE
                   ) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(int(s) <= 0 or int(s) % multiple for s in size):
        raise ValueError(
            f"img_size {img_size} is not supported: height and width must be positive "
            f"multiples of {multiple}"
        )
    return int(size[0]), int(size[1])


def check_input(x: torch.Tensor, in_chans: int, multiple: int = INPUT_MULTIPLE) -> None:
    """Reject an image batch the model cannot take, before any work is done.

    Written in TorchScript's subset, so a scripted model refuses a bad batch in the same line;
    the model modules wrap it for torch.fx (see vitmix.layers.tracing)."""
    expected = ("expected images of shape (B, " + str(in_chans) + ", H, W), got shape "
                + shape_text(x.shape))
    if x.dim() != 4:
        raise ValueError(expected)
    if x.shape[1] != in_chans:
        raise ValueError(expected + ": expected " + str(in_chans) + " input channels, got "
                         + str(x.shape[1]))
    h, w = x.shape[2], x.shape[3]
    if h % multiple != 0 or w % multiple != 0:
        raise ValueError("input size " + str(h) + "x" + str(w) + " is not supported: height "
                         "and width must be multiples of " + str(multiple))


def check_stage_sizes(depths: Sequence[int], dims: Sequence[int]) -> int:
    """The number of stages, after checking that depths and dims give one positive integer
    per stage."""
    for name, value in (("depths", depths), ("dims", dims)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise ValueError(f"{name} must be a sequence with one positive integer per stage, "
                             f"got {value!r}")
    if len(dims) != len(depths):
        raise ValueError(f"dims and depths need one entry per stage, got {len(dims)} dims "
                         f"and {len(depths)} depths")
    for name, value in (("depths", depths), ("dims", dims)):
        for i, v in enumerate(value):
            check_positive_int(f"{name}[{i}]", v)
    return len(depths)


def check_scheme_args(num_stages: int, mlp_ratios, mlp_groups, cca, cca_schedule,
                      channel_shuffle=False) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """SCHEME's model arguments, the same in both families: per-stage expansion and groups
    (one value or one per stage), one CCA switch and schedule and one channel-shuffle switch
    for the whole model."""
    ratios = check_per_stage("mlp_ratios", mlp_ratios, num_stages, check_positive_number)
    groups = check_per_stage("mlp_groups", mlp_groups, num_stages, check_positive_int)
    check_bool("cca", cca)
    check_bool("channel_shuffle", channel_shuffle)
    check_choice("cca_schedule", cca_schedule, CCA_SCHEDULES)
    return ratios, groups


def make_channel_mixer(dim: int, mlp_ratio: float, groups: int, cca: bool, cca_schedule: str,
                       drop: float, use_conv: bool, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None, channel_shuffle: bool = False
                       ) -> nn.Module:
    """The MLP of a block: a SchemeMlp (G groups, CCA, the hidden channels shuffled when
    asked), or timm's own Mlp for the dense baseline (G = 1 without CCA, where a shuffle would
    change nothing), so that schemify() can replace it like any timm Mlp.
    ``use_conv``: on (B, C, H, W) maps, else on (..., C) tokens."""
    hidden = int(mlp_ratio * dim)
    if hidden < 1:
        raise ValueError(f"mlp_ratio {mlp_ratio} gives no hidden channels at width {dim}")
    dd = dict(device=device, dtype=dtype)
    if groups == 1 and not cca:
        return Mlp(dim, hidden, act_layer=nn.GELU, drop=drop, use_conv=use_conv, **dd)
    return SchemeMlp(dim, hidden, act_layer=nn.GELU, drop=drop, use_conv=use_conv, **dd,
                     groups=groups, cca=cca, cca_schedule=cca_schedule,
                     channel_shuffle=channel_shuffle)


def build_on(device: torch.device | str | None, dtype: torch.dtype | None,
             factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with its parameters and buffers made on ``device`` and cast to ``dtype``,
    for layers whose constructors take neither (the token mixers, Group-Mix Attention)."""
    on_device = torch.device(device) if device is not None else contextlib.nullcontext()
    with on_device:
        module = factory()
    return module if dtype is None else module.to(dtype=dtype)


def take_indices(num_stages: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's intermediate indices: None for every stage, n for the last n, or a sequence of
    stage indices (negative ones count from the end). Returns them from 0 and the largest."""
    if indices is None:
        indices = num_stages
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices} asks for the last {indices} stages; "
                             f"expected 1 to {num_stages}")
        taken = list(range(num_stages - indices, num_stages))
    elif isinstance(indices, Sequence) and not isinstance(indices, (str, bytes)) and indices:
        taken = []
        for i in indices:
            if (isinstance(i, bool) or not isinstance(i, int)
                    or not -num_stages <= i < num_stages):
                raise ValueError(f"stage index {i!r} in indices={list(indices)} is out of "
                                 f"range; expected -{num_stages} to {num_stages - 1}")
            taken.append(i % num_stages)
    else:
        raise ValueError(f"indices must be None, a number of last stages or a sequence of "
                         f"stage indices, got {indices!r}")
    return taken, max(taken)


GLOBAL_POOLS = ("avg", "")


def check_global_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
    return global_pool


def reject_extra_kwargs(model_name: str, kwargs: dict) -> None:
    """timm passes pretrained_cfg to every constructor; anything else left over is a typo."""
    kwargs.pop("pretrained_cfg", None)
    if kwargs:
        raise TypeError(f"{model_name} got unexpected arguments: {sorted(kwargs)}")


class PooledClassifierMixin:
    """timm's conventions for a backbone of ``self.stages`` ending in a (B, C, H, W) map that
    ``self.norm`` normalises, average-pooled into ``self.head``.

    The model sets ``stem_pattern`` (a regex over parameter names) for group_matcher, and
    ``num_features``, ``global_pool``, ``head_drop``, ``head`` in its constructor.
    """

    stem_pattern: str = r"^stem"

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=self.stem_pattern,
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
        # The new head goes where the model lives, in its dtype.
        ref = next(self.parameters())
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity())

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """What runs before ``self.stages``."""
        return self.stem(x)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter and buffer the way the constructor does, e.g. after
        ``to_empty()`` of a model built with ``device="meta"``."""
        for m in self.modules():
            if m is not self and callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
        self.apply(self._init_weights)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the (B, C, H, W) output of the stages in ``indices`` (None: all,
        n: the last n, or a sequence of stage indices), and the final features.

        ``norm``: the last stage's map goes through the final norm (the one forward_head
        applies; the other stages have none). ``stop_early``: stop after the last stage asked
        for (the final features are then that stage's). The final features, without stop_early,
        are what forward_features returns.
        """
        check_choice("output_fmt", output_fmt, ("NCHW",))
        take, max_index = take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.forward_stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1,
                                  prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the head, the final norm);
        returns the kept indices counted from 0, as timm's feature wrappers expect."""
        take, max_index = take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()  # sized for, and only applied to, the last stage
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x)
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
