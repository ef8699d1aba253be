"""What the vitmix model families share: input checks and timm's classifier conventions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

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
    """Reject an image batch the model cannot take, before any work is done."""
    expected = f"expected images of shape (B, {in_chans}, H, W), got shape {tuple(x.shape)}"
    if x.dim() != 4:
        raise ValueError(expected)
    if x.shape[1] != in_chans:
        raise ValueError(f"{expected}: expected {in_chans} input channels, got {x.shape[1]}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"input size {h}x{w} is not supported: height and width must be "
                         f"multiples of {multiple}")


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
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x)
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
