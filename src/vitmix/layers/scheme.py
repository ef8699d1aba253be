"""SCHEME channel mixer: block-diagonal MLP plus a training-only channel covariance attention.

Layout conventions: the MLP accepts channels-last input (..., C) such as (B, N, C) or (B, H, W, C),
or channels-first (B, C, H, W) when built with ``use_conv=True`` (timm's name) or
``channels_first=True``. Both are computed as
batched matmuls over the groups, laid out so that no activation is copied between fc1 and fc2;
a (B, C, H, W) map stored channels_last is read in place by the channels-last kernels.
Fused CPU inference kernels for these layers live in :mod:`vitmix.accelerate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .checks import (
    check_bool,
    check_callable,
    check_choice,
    check_pair,
    check_positive_int,
    check_positive_number,
    check_probability,
)
from .tracing import is_fx_tracing, shape_text, shape_with

__all__ = ["BlockDiagonalLinear", "ChannelCovarianceAttention", "SchemeMlp", "cosine_cca_weight",
           "covariance_softmax", "shuffle_channels"]


def check_channels(x: torch.Tensor, dim: int, expected: int, owner: str, where: str) -> None:
    """Refuse a tensor whose dimension ``dim`` is not ``expected`` channels, in one line."""
    got = x.shape[dim]
    if got != expected:
        raise ValueError(owner + " expected " + str(expected) + " input channels in " + where
                         + ", got " + str(got))


def check_channels_first_input(x: torch.Tensor, owner: str) -> None:
    if x.dim() < 3:
        raise ValueError(owner + "(channels_first=True) expects (B, C, ...), got "
                         + shape_text(x.shape))


# Recorded as calls by torch.fx (see vitmix.layers.tracing): they read shapes.
torch.fx.wrap("check_channels")
torch.fx.wrap("check_channels_first_input")
torch.fx.wrap("shape_with")


def _check_divisible(name: str, value: int, groups: int) -> None:
    if value % groups != 0:
        raise ValueError(
            f"{name}={value} is not divisible by groups={groups}; "
            f"choose groups that divide {value}"
        )


class BlockDiagonalLinear(nn.Module):
    """A linear layer whose weight is block diagonal with ``groups`` blocks.

    Group g maps input channels [g*in/G, (g+1)*in/G) to output channels [g*out/G, (g+1)*out/G).
    Parameters and MACs are those of a dense layer divided by G.
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        groups = check_positive_int("groups", groups)
        check_bool("bias", bias)
        _check_divisible("in_features", in_features, groups)
        _check_divisible("out_features", out_features, groups)
        self.in_features = in_features
        self.out_features = out_features
        self.groups = groups
        dd = dict(device=device, dtype=dtype)
        block_shape = (groups, out_features // groups, in_features // groups)
        self.weight = nn.Parameter(torch.empty(block_shape, **dd))
        self.bias = nn.Parameter(torch.empty(out_features, **dd)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # What nn.Linear does (timm.layers.Mlp keeps that init), with the fan-in of one block.
        fan_in = self.in_features // self.groups
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )

    # Grouped layout (G, M, in/G) -> (G, M, out/G): the form SchemeMlp keeps between fc1 and fc2.
    def forward_grouped(self, xg: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(xg, self.weight.transpose(1, 2))
        bias = self.bias.view(self.groups, 1, -1)
        return torch.baddbmm(bias, xg, self.weight.transpose(1, 2))

    def to_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (G, M, in/G), a strided view where the input allows it."""
        check_channels(x, -1, self.in_features, "BlockDiagonalLinear", "the last dimension")
        return x.reshape(-1, self.groups, self.in_features // self.groups).transpose(0, 1)

    def from_grouped(self, yg: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(G, M, out/G) -> (..., out), the leading dimensions those of ``like`` (..., in)."""
        return yg.transpose(0, 1).reshape(shape_with(like.shape, -1, self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return F.linear(x, self.weight[0], self.bias)
        return self.from_grouped(self.forward_grouped(self.to_grouped(x)), x)

    # Channels-first (B, in, *spatial) -> (B, out, *spatial), without moving channels last.
    def forward_channels_first(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, 1, self.in_features, "BlockDiagonalLinear",
                       "dimension 1 (channels first)")
        xg = x.reshape(x.shape[0], self.groups, self.in_features // self.groups, -1)
        y = torch.matmul(self.weight, xg)  # (B, G, out/G, S)
        if self.bias is not None:
            y = y + self.bias.view(1, self.groups, -1, 1)
        return y.reshape(shape_with(x.shape, 1, self.out_features))

    def to_dense(self) -> torch.Tensor:
        """The equivalent dense (out, in) weight."""
        return torch.block_diag(*self.weight.unbind(0))


def covariance_softmax(feats: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale X^T X) over the last axis from X^T, (B, C, N) -> (B, C, C)."""
    # The scale rides in the matmul's alpha rather than a pass over the B x C x C product,
    # which outweighs the matmul itself where few tokens remain (0.64x the time of a forward
    # and backward at 1 token and 256 channels, measured in one process).
    zero = feats.new_zeros(1, 1, 1)
    cov = torch.baddbmm(zero, feats, feats.transpose(1, 2), beta=0, alpha=scale)
    return torch.softmax(cov, dim=-1)


class ChannelCovarianceAttention(nn.Module):
    """Parameter-free channel attention from the channel covariance of each sample's tokens.

    For x of shape (B, ..., C) seen as X of shape (B, N, C): A = softmax(X^T X * scale) over its
    last axis (a C x C matrix per sample) and the output is X A^T, shaped like x. Each output
    channel is a convex combination of the input channels. A (B, C) input is one token per
    sample (N = 1), a (C,) input one sample of one token.
    """

    def __init__(self, scale: float | None = None, normalize_tokens: bool = False):
        super().__init__()
        if scale is not None:
            check_positive_number("scale", scale)
        check_bool("normalize_tokens", normalize_tokens)
        self.scale = scale
        self.normalize_tokens = normalize_tokens

    def extra_repr(self) -> str:
        return f"scale={self.scale}, normalize_tokens={self.normalize_tokens}"

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> the (B, C, C) attention matrix A."""
        return self._attention_from_features(tokens.transpose(1, 2))

    def logit_scale(self, channels: int, tokens: int) -> float:
        """The factor on X^T X for C channels and N tokens per sample."""
        scale = channels**-0.5 if self.scale is None else self.scale
        return scale / tokens if self.normalize_tokens else scale

    def _attention_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """A from X^T, (B, C, N) -> (B, C, C)."""
        return covariance_softmax(feats, self.logit_scale(feats.shape[1], feats.shape[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(cca_token_shape(x))
        out = torch.bmm(tokens, self.attention(tokens).transpose(1, 2))
        return out.reshape(x.shape)

    def forward_channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial): the same operator, computed without moving channels last."""
        feats = x.flatten(2)  # X^T, (B, C, N)
        attn = self._attention_from_features(feats)
        return torch.bmm(attn, feats).reshape(x.shape)  # (X A^T)^T = A X^T


def cca_token_shape(x: torch.Tensor) -> list[int]:
    """The (B, N, C) shape CCA sees ``x`` as. timm's Mlp takes (..., C) in any mode, so CCA
    does too: (B, C) is one token per sample, and a lone (C,) token one sample of one token."""
    if x.dim() == 0:
        raise ValueError("ChannelCovarianceAttention expects (..., C), got a scalar")
    return [x.shape[0] if x.dim() > 1 else 1, -1, x.shape[-1]]


torch.fx.wrap("cca_token_shape")


def _is_channels_last_memory(x: torch.Tensor) -> bool:
    """True for a (B, C, *spatial) tensor whose channels are its innermost, contiguous axis."""
    return x.dim() > 2 and x.shape[1] > 1 and _channels_to_last(x).is_contiguous()


# permute() with explicit non-negative axes rather than movedim(1, -1): ONNX's exporter turns
# the latter into a Transpose with a negative axis, which onnxruntime rejects.
def _channels_to_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute([0] + list(range(2, x.dim())) + [1])


def _channels_to_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute([0, x.dim() - 1] + list(range(1, x.dim() - 1)))


def shuffle_channels(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle along ``dim``: the C channels seen as (groups, C/groups),
    the two axes swapped, flattened back, so output channel k*groups + g is input channel
    g*C/groups + k and each contiguous group of the output holds channels of every input group.
    """
    dim = dim % x.dim()
    return x.unflatten(dim, (groups, -1)).transpose(dim, dim + 1).flatten(dim, dim + 1)


def cosine_cca_weight(start: float, progress: float) -> float:
    """CCA weight under the cosine schedule: ``start`` at progress 0, exactly 0 at progress 1."""
    progress = min(max(float(progress), 0.0), 1.0)
    if progress >= 1.0:
        return 0.0
    return start * 0.5 * (1.0 + math.cos(math.pi * progress))


CCA_SCHEDULES = ("learned", "cosine")


class SchemeMlp(nn.Module):
    """SCHEME channel mixer, a drop-in replacement for timm.layers.Mlp.

    Training: ``a * BD-MLP(x) + (1 - a) * CCA(x)``. Eval: ``a * BD-MLP(x)``, exactly what the
    deployed module computes once :func:`vitmix.deploy` folds ``a`` into fc2.

    The first arguments are timm's Mlp's, in its order, so ``mlp_layer=partial(SchemeMlp,
    groups=4)`` works wherever timm builds an Mlp. ``norm_layer`` normalises the whole hidden
    activation (all groups together) before fc2, as in timm. ``use_conv=True`` (timm's name)
    and ``channels_first=True`` both mean (B, C, H, W) maps, else (..., C) tokens.

    ``cca_schedule="learned"``: (a, 1-a) is the softmax of two learnable logits, initialised from
    a standard normal as the authors do. ``"cosine"``: the logits are frozen at their initial
    values and 1-a follows a cosine from that start to exactly 0 as :meth:`set_progress` goes
    from 0 to 1, so the branch can always be removed without changing the function.

    ``channel_shuffle=True`` shuffles the hidden channels right before fc2 (after the
    activation, dropout and norm), as ShuffleNet does and as the authors' release does in its
    ``ShuffleGroupLiteAttMlp``: see :func:`shuffle_channels`. It has no parameters, so the state
    dict is the same with and without it; with one group it changes nothing.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] | None = None,
        bias: bool | tuple[bool, bool] = True,
        drop: float | tuple[float, float] = 0.0,
        use_conv: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        groups: int = 1,
        cca: bool = True,
        cca_schedule: str = "learned",
        channels_first: bool = False,
        channel_shuffle: bool = False,
    ):
        super().__init__()
        in_features = check_positive_int("in_features", in_features)
        hidden_features = in_features if hidden_features is None else check_positive_int(
            "hidden_features", hidden_features)
        out_features = in_features if out_features is None else check_positive_int(
            "out_features", out_features)
        check_callable("act_layer", act_layer)
        check_callable("norm_layer", norm_layer, optional=True)
        bias1, bias2 = check_pair("bias", bias, check_bool)
        drop1, drop2 = check_pair("drop", drop, check_probability)
        channels_first = check_bool("use_conv", use_conv) or check_bool(
            "channels_first", channels_first)
        groups = check_positive_int("groups", groups)
        check_bool("cca", cca)
        check_bool("channel_shuffle", channel_shuffle)
        check_choice("cca_schedule", cca_schedule, CCA_SCHEDULES)
        if cca and out_features != in_features:
            raise ValueError(
                f"CCA mixes the input channels into the output, so it needs "
                f"out_features == in_features, got in_features={in_features}, "
                f"out_features={out_features}; pass cca=False"
            )
        _check_divisible("in_features", in_features, groups)
        _check_divisible("hidden_features", hidden_features, groups)
        _check_divisible("out_features", out_features, groups)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = out_features
        self.groups = groups
        self.channels_first = channels_first
        self.channel_shuffle = channel_shuffle
        self.cca_schedule = cca_schedule

        dd = dict(device=device, dtype=dtype)
        self.fc1 = BlockDiagonalLinear(in_features, hidden_features, groups, bias=bias1, **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop1)
        # No parameters unless a norm is asked for, so existing state dicts keep their keys.
        self.norm = nn.Identity() if norm_layer is None else norm_layer(hidden_features, **dd)
        self.fc2 = BlockDiagonalLinear(hidden_features, out_features, groups, bias=bias2, **dd)
        self.drop2 = nn.Dropout(drop2)

        if cca:
            self.cca = ChannelCovarianceAttention(scale=hidden_features**-0.5)
            logits = torch.randn(2, **dd)
            if cca_schedule == "learned":
                self.mix_logits = nn.Parameter(logits)
            else:
                self.register_buffer("mix_logits", logits)
            self.register_buffer("progress", torch.zeros((), **dd))
        else:
            self.cca = None
            self.mix_logits = None
            self.progress = None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise the mixing logits and the schedule's progress as the constructor does
        (fc1, fc2 and the norm reset their own), e.g. after ``to_empty()``."""
        if self.mix_logits is not None:
            self.mix_logits.normal_()
            self.progress.zero_()

    def extra_repr(self) -> str:
        cca = "none" if self.cca is None else self.cca_schedule
        shuffle = ", channel_shuffle=True" if self.channel_shuffle else ""
        return f"groups={self.groups}, cca={cca}, channels_first={self.channels_first}{shuffle}"

    @property
    def has_cca(self) -> bool:
        return self.cca is not None

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1]; drives the cosine schedule (ignored when learned)."""
        if not 0.0 <= float(progress) <= 1.0:
            raise ValueError(f"progress must lie in [0, 1], got {progress}")
        if self.progress is not None:
            self.progress.fill_(float(progress))

    def mix_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, 1 - a) as tensors; gradients flow to the logits when they are learned."""
        if self.cca_schedule == "cosine":
            # Tensor ops rather than .item(), so torch.compile traces it without a graph break.
            start = torch.softmax(self.mix_logits, dim=0)[1]
            p = self.progress.clamp(0.0, 1.0)
            cosine = start * 0.5 * (1.0 + torch.cos(math.pi * p))
            cca_w = torch.where(p >= 1.0, torch.zeros_like(cosine), cosine)
            return 1.0 - cca_w, cca_w
        weights = torch.softmax(self.mix_logits, dim=0)
        return weights[0], weights[1]

    def cca_weight(self) -> float:
        """Current weight (1 - a) of the CCA branch; 0 when the branch is absent."""
        if self.cca is None:
            return 0.0
        return float(self.mix_weights()[1].detach())

    @torch.no_grad()
    def fuse_mixing(self) -> float:
        """Fold a into fc2 and remove the CCA branch; returns the CCA weight that was dropped.

        Afterwards the module computes, in any mode, what it computed in eval mode before.
        """
        if self.cca is None:
            return 0.0
        a, cca_w = self.mix_weights()
        self.fc2.weight.mul_(a)
        if self.fc2.bias is not None:
            self.fc2.bias.mul_(a)
        dropped = float(cca_w.detach())
        self.cca = None
        del self.mix_logits
        del self.progress
        self.mix_logits = None
        self.progress = None
        return dropped

    @property
    def has_norm(self) -> bool:
        return not isinstance(self.norm, nn.Identity)

    def _norm_grouped(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The hidden norm on the grouped (G, M, hidden/G) activation: it normalises over the
        whole hidden width, so it sees the (..., hidden) tokens a dense Mlp would give it."""
        if not self.has_norm:
            return h
        tokens = self.fc1.from_grouped(h, x)
        return self.fc2.to_grouped(self.norm(tokens))

    @property
    def shuffles(self) -> bool:
        """True when the hidden channels are shuffled (with one group the shuffle is the
        identity, and is skipped)."""
        return self.channel_shuffle and self.groups > 1

    def _shuffle_grouped(self, h: torch.Tensor) -> torch.Tensor:
        """The channel shuffle on the grouped (G, M, hidden/G) activation, in one copy: the
        token-major (M, hidden/G, G) order is the shuffled hidden vector, which is then cut
        into fc2's G contiguous groups again."""
        return h.permute(1, 2, 0).reshape(-1, self.groups, self.hidden_features // self.groups
                                          ).transpose(0, 1)

    def forward_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The block-diagonal MLP branch alone:
        drop2(fc2(shuffle(norm(drop1(act(fc1(x)))))), the shuffle only with channel_shuffle."""
        if self.channels_first:
            return self._mlp_channels_first(x)
        return self._mlp_channels_last(x)

    def _mlp_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1.forward_grouped(self.fc1.to_grouped(x))
        h = self._norm_grouped(self.drop1(self.act(h)), x)
        if self.shuffles:
            h = self._shuffle_grouped(h)
        y = self.fc2.forward_grouped(h)
        return self.drop2(self.fc2.from_grouped(y, x))

    def _reads_channels_last_in_place(self, x: torch.Tensor) -> bool:
        """Whether a (B, C, H, W) map is stored as (B, H, W, C), so that the channels-last
        kernels can read it in place. Not with a hidden norm, which (as in timm's use_conv
        Mlp) takes (B, C, H, W) maps; and not while torch.fx records the layer, which has no
        memory layout to look at (it records the layout-free path, the same function)."""
        if self.has_norm or is_fx_tracing():
            return False
        return _is_channels_last_memory(x)

    def _mlp_channels_first(self, x: torch.Tensor) -> torch.Tensor:
        if self._reads_channels_last_in_place(x):
            return _channels_to_first(self._mlp_channels_last(_channels_to_last(x)))
        h = self.norm(self.drop1(self.act(self.fc1.forward_channels_first(x))))
        if self.shuffles:
            h = shuffle_channels(h, self.groups, dim=1)
        return self.drop2(self.fc2.forward_channels_first(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            check_channels_first_input(x, "SchemeMlp")
        y = self.forward_mlp(x)
        if self.cca is None:
            return y
        a, cca_w = self.mix_weights()
        if not self.training:
            return a * y
        if self.channels_first:
            mixed = self.cca.forward_channels_first(x)
        else:
            mixed = self.cca(x)
        return a * y + cca_w * mixed
