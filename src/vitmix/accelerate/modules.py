"""Accelerated twins of vitmix's layers and blocks, and of timm's Mlp.

Each twin is a subclass of the plain module that :func:`vitmix.accelerate.accelerate` assigns as
the module's class: the module keeps its parameters, buffers, state-dict keys and hooks, and
computes the same function. Its forward takes the fused inference kernels only when
:func:`kernels.inference_allowed` (eager float32 CPU inference), and the MLPs and linear layers
take the memory-lean training functions of :mod:`.training` when
:func:`training.training_allowed` (eager, autograd recording); everything else (torch.compile,
export, FLOP counting, the switch off) runs the plain forward. Weights the inference kernels
derive from the parameters (a folded mixing weight, per-group chunks, folded BatchNorm) are
computed once and kept until a parameter or buffer they come from changes.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from ..layers.group_mix import GroupMixAttention, depthwise_conv_channels_last
from ..layers.scheme import SchemeMlp, check_channels
from ..layers.token_mixers import Pooling
from ..models.vitmix_groupmixformer import GroupMixBlock
from ..models.vitmix_metaformer import MetaFormerBlock
from . import kernels, training
from .kernels import RowKernel

# Groups with at most this many input channels run as G dense fc1 -> fc2 chains, each on a copy
# of its channels: oneDNN's grouped convolution is far slower than G dense ones for thin groups,
# and faster for wide ones (docs/performance.md has the measurements).
PER_GROUP_KERNELS_MAX_WIDTH = 32

_CACHE_ATTR = "_vitmix_derived"


def derived(module: nn.Module, build: Callable[[], Any]) -> Any:
    """``build()``, kept on ``module`` until its mode or any of its parameters and buffers
    changes (in-place updates bump a tensor's version; loading or moving replaces it)."""
    key = (module.training, tuple((t.data_ptr(), t._version)
                                  for t in chain(module.parameters(), module.buffers())))
    kept = module.__dict__.get(_CACHE_ATTR)
    if kept is None or kept[0] != key:
        kept = (key, build())
        module.__dict__[_CACHE_ATTR] = kept
    return kept[1]


def forget_derived(module: nn.Module) -> None:
    module.__dict__.pop(_CACHE_ATTR, None)


def _is_pointwise(layer: nn.Module) -> bool:
    if type(layer) is nn.Linear:
        return True
    return (type(layer) is nn.Conv2d and layer.kernel_size == (1, 1) and layer.stride == (1, 1)
            and layer.padding == (0, 0) and layer.dilation == (1, 1) and layer.groups == 1)


def row_kernel_of(mlp: nn.Module) -> RowKernel | None:
    """The fused row kernel that computes ``mlp(rows)``, or None (run the module itself)."""
    kernel = getattr(mlp, "row_kernel", None)
    return kernel() if kernel is not None else None


def _lean_activation(act: nn.Module, drop1: nn.Module) -> training.ActivationRule | None:
    """The activation rule when the memory-lean training functions can run this MLP: an
    activation they know how to differentiate and plain dropout after it."""
    if type(drop1) not in (nn.Dropout, nn.Identity):
        return None
    return training.activation_rule(act)


def _dropout_p(drop: nn.Module) -> float:
    return drop.p if type(drop) is nn.Dropout and drop.training else 0.0


def _as_groups(weight: torch.Tensor) -> torch.Tensor:
    """A dense (out, in) or (out, in, 1, 1) weight as the (1, out, in) block-diagonal form."""
    return weight.view(1, weight.shape[0], weight.shape[1])


def _trains_lean(module: nn.Module, x: torch.Tensor, *weights: torch.Tensor | None) -> bool:
    """Whether ``module`` trains through vitmix.accelerate.training: asked for at accelerate()
    (``lean_training``) and allowed for this call."""
    return getattr(module, "lean_training", True) and training.training_allowed(x, *weights)


class AcceleratedLinear(nn.Linear):
    """nn.Linear through oneDNN (the attention layers' qkv and proj): the 1x1 convolution kernel
    in inference, oneDNN's matrix product in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.inference_allowed(x, self.weight):
            return kernels.linear(x, self.weight, self.bias)
        if _trains_lean(self, x, self.weight, self.bias):
            return training.linear(x, self.weight, self.bias)
        return super().forward(x)


class AcceleratedMlp(Mlp):
    """timm's Mlp (linear layers on tokens, or 1x1 convolutions on maps): fc1 with its bias and
    activation as one kernel, then fc2, over chunks of rows."""

    @staticmethod
    def accepts(mlp: nn.Module) -> bool:
        return (type(mlp) is Mlp and _is_pointwise(mlp.fc1) and type(mlp.fc2) is type(mlp.fc1)
                and _is_pointwise(mlp.fc2) and type(mlp.norm) is nn.Identity)

    def row_kernel(self) -> RowKernel:
        fc1, fc2 = self.fc1, self.fc2
        w1 = fc1.weight.view(fc1.weight.shape[0], -1, 1, 1)
        w2 = fc2.weight.view(fc2.weight.shape[0], -1, 1, 1)
        return (lambda rows: kernels.mlp_rows(rows, w1, fc1.bias, w2, fc2.bias, self.act,
                                              self.drop1, self.drop2), w1.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_first = type(self.fc1) is nn.Conv2d
        if channels_first and x.dim() != 4:
            return super().forward(x)
        if kernels.inference_allowed(x, self.fc1.weight):
            return kernels.apply_row_kernel(self.row_kernel(), x, self.fc2.weight.shape[0],
                                            channels_first)
        lean = self.lean_forward(x)
        return lean if lean is not None else super().forward(x)

    def lean_forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None
                     ) -> torch.Tensor | None:
        """``out_scale * self(x)`` through the memory-lean training functions (``out_scale``, a
        per-channel LayerScale, is folded into fc2), or None where they do not apply."""
        channels_first = type(self.fc1) is nn.Conv2d
        if channels_first and not getattr(self, "lean_conv", False):
            # oneDNN's own 1x1 convolutions train a dense MLP on maps faster than the lean
            # functions once allocation is cheap (docs/performance.md); accelerate(...,
            # lean_conv_mlp=True) asks for them anyway, e.g. to compare like with like.
            return None
        act = _lean_activation(self.act, self.drop1)
        if (act is None or (channels_first and x.dim() != 4)
                or not _trains_lean(self, x, self.fc1.weight)):
            return None
        rows, back = kernels.rows_and_back(x, channels_first)
        w2, b2 = _as_groups(self.fc2.weight), self.fc2.bias
        if out_scale is not None:
            w2, b2 = _scale_outputs(w2, b2, out_scale)
        y = training.block_diagonal_mlp(
            rows, _as_groups(self.fc1.weight), self.fc1.bias, w2, b2, act,
            _dropout_p(self.drop1), getattr(self, "store_hidden", False))
        return back(self.drop2(y))


def _scale_outputs(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A (G, out/G, in/G) layer's weight and bias with output channel k times ``scale[k]``
    (a scalar, or one value per output channel): ``scale * (W h + b) = (scale W) h + scale b``,
    so autograd finds the scale's gradient through the weights instead of keeping the layer's
    output for it."""
    if scale.dim() == 0:
        return scale * weight, None if bias is None else scale * bias
    return (scale.view(weight.shape[0], weight.shape[1], 1) * weight,
            None if bias is None else scale * bias)


def _group_chunks(bias: torch.Tensor | None, groups: int) -> list[torch.Tensor | None]:
    return [None] * groups if bias is None else list(bias.chunk(groups))


class AcceleratedSchemeMlp(SchemeMlp):
    """SchemeMlp's block-diagonal branch as oneDNN grouped 1x1 convolutions fused with bias and
    activation (or, for thin groups, G dense chains), over chunks of rows.

    Why not the batched matmuls of the plain path: a matmul with bias copies the bias into the
    output before the product and the activation is one more pass, so the E-times-wider hidden
    activation would cross memory three times where the fused kernel writes it once.
    """

    @staticmethod
    def accepts(mlp: nn.Module) -> bool:
        # The kernels have no hidden norm and no channel shuffle between fc1 and fc2.
        return (type(mlp) is SchemeMlp and type(getattr(mlp, "norm", nn.Identity())) is nn.Identity
                and not getattr(mlp, "channel_shuffle", False))

    def _branch_kernel(self, a: torch.Tensor | None = None) -> RowKernel:
        """The MLP branch on (T, in) contiguous rows, times the scalar ``a`` when given."""
        g = self.groups
        w1 = self.fc1.weight.view(self.hidden_features, self.in_features // g, 1, 1)
        w2 = self.fc2.weight.view(self.out_features, self.hidden_features // g, 1, 1)
        b1, b2 = self.fc1.bias, self.fc2.bias
        if a is not None:
            w2, b2 = a * w2, None if b2 is None else a * b2
        if g == 1 or self.in_features // g > PER_GROUP_KERNELS_MAX_WIDTH:
            return (lambda rows: kernels.mlp_rows(rows, w1, b1, w2, b2, self.act, self.drop1,
                                                  self.drop2, groups=g), self.hidden_features)
        per_group = list(zip(w1.chunk(g), _group_chunks(b1, g), w2.chunk(g),
                             _group_chunks(b2, g), strict=True))

        def per_group_rows(rows: torch.Tensor) -> torch.Tensor:
            out = rows.new_empty(rows.shape[0], self.out_features)
            for cols, out_cols, (w1_k, b1_k, w2_k, b2_k) in zip(
                    rows.chunk(g, dim=1), out.chunk(g, dim=1), per_group, strict=True):
                out_cols.copy_(kernels.mlp_rows(cols.contiguous(), w1_k, b1_k, w2_k, b2_k,
                                                self.act, self.drop1, self.drop2))
            return out

        return per_group_rows, self.hidden_features // g

    def _kernels(self) -> tuple[RowKernel, RowKernel | None]:
        """(the branch alone, the whole module row by row: None in training with a CCA branch,
        whose output depends on the whole input rather than on each row)."""
        with torch.no_grad():
            branch = self._branch_kernel()
            if self.cca is None:
                return branch, branch
            if self.training:
                return branch, None
            return branch, self._branch_kernel(self.mix_weights()[0])  # eval: a * MLP(x)

    def row_kernel(self) -> RowKernel | None:
        return derived(self, self._kernels)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lean = self.lean_forward(x)
        return lean if lean is not None else super().forward(x)

    def lean_forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None
                     ) -> torch.Tensor | None:
        """``out_scale * self(x)`` through the memory-lean training functions, or None where they
        do not apply (then the plain forward runs, and says what is wrong with x).

        The mixing weight a and ``out_scale`` (a per-channel LayerScale) are folded into fc2,
        a * (W2 h + b2) = (a W2) h + a b2, so autograd finds their gradients through the weights,
        and CCA is added into the MLP's output by one function."""
        act = _lean_activation(self.act, self.drop1)
        if (act is None or x.dim() < (3 if self.channels_first else 1)
                or not _trains_lean(self, x, self.fc1.weight)):
            return None
        where = "dimension 1 (channels first)" if self.channels_first else "the last dimension"
        check_channels(x, 1 if self.channels_first else -1, self.fc1.in_features,
                       "BlockDiagonalLinear", where)
        rows, back = kernels.rows_and_back(x, self.channels_first)
        mlp_scale = out_scale
        if self.cca is not None:
            a, cca_w = self.mix_weights()
            mlp_scale = a if out_scale is None else a * out_scale
        w2, b2 = self.fc2.weight, self.fc2.bias
        if mlp_scale is not None:
            w2, b2 = _scale_outputs(w2, b2, mlp_scale)
        y = training.block_diagonal_mlp(rows, self.fc1.weight, self.fc1.bias, w2, b2, act,
                                        _dropout_p(self.drop1),
                                        getattr(self, "store_hidden", False))
        y = self.drop2(y)
        if self.cca is not None and self.training:
            # As the plain CCA: (B, C) is one token per sample, (C,) one sample of one token.
            batch, channels = (x.shape[0] if x.dim() > 1 else 1), rows.shape[-1]
            tokens = rows.view(batch, -1, channels)
            scale = self.cca.logit_scale(channels, tokens.shape[1])
            weight = cca_w if out_scale is None else cca_w * out_scale
            y = training.covariance_mix(tokens, y.view(batch, -1, channels), weight,
                                        scale).view(-1, channels)
        return back(y)

    def forward_mlp(self, x: torch.Tensor) -> torch.Tensor:
        if not kernels.inference_allowed(x, self.fc1.weight):
            return super().forward_mlp(x)
        where = "dimension 1 (channels first)" if self.channels_first else "the last dimension"
        check_channels(x, 1 if self.channels_first else -1, self.fc1.in_features,
                       "BlockDiagonalLinear", where)
        branch = derived(self, self._kernels)[0]
        return kernels.apply_row_kernel(branch, x, self.out_features, self.channels_first)


def _layer_scale(ls: nn.Module) -> torch.Tensor | None:
    return getattr(ls, "gamma", None)


class AcceleratedMetaFormerBlock(MetaFormerBlock):
    """The same function with fewer passes over memory.

    In the early stages the activations are far larger than the caches, and the plain expression
    writes five of them per branch (mixer output, pooling difference, scaled, sum, MLP output).
    Here the pooling difference is taken in place, scale and residual are one addcmul, and the
    MLP branch is scaled and added chunk by chunk into the residual stream while each chunk is
    in cache.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The cheap checks first: the MLP's kernel is only looked up when it can be used.
        gamma1, gamma2 = _layer_scale(self.ls1), _layer_scale(self.ls2)
        if gamma2 is not None and hasattr(self.mlp, "lean_forward") and self.training:
            return self._lean_forward(x, gamma2)
        if (self.training or gamma1 is None or gamma2 is None
                or not kernels.inference_allowed(x, self.norm1.weight)):
            return super().forward(x)
        kernel = row_kernel_of(self.mlp)
        if kernel is None:
            return super().forward(x)
        t = self.norm1(x)
        if type(self.token_mixer) is Pooling:
            mixed = self.token_mixer.pool(t).sub_(t)  # the pooling's own output: ours to change
        else:
            mixed = self.token_mixer(t)
        x = torch.addcmul(x, mixed, gamma1.view(1, -1, 1, 1))
        t = self.norm2(x)
        added = kernels.add_rows_(x, kernel, t, gamma2, channels_first=True)
        return added if added is not None else x + self.ls2(self.mlp(t))


    def _lean_forward(self, x: torch.Tensor, gamma2: torch.Tensor) -> torch.Tensor:
        """Training: the MLP branch's LayerScale folded into the MLP's fc2 (see
        :meth:`AcceleratedSchemeMlp.lean_forward`), which spares a pass over the branch's output
        forward and backward and the copy of it autograd would keep for the scale's gradient."""
        x = x + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x))))
        t = self.norm2(x)
        branch = self.mlp.lean_forward(t, out_scale=gamma2)
        if branch is None:
            branch = self.ls2(self.mlp(t))
        return x + self.drop_path2(branch)


class AcceleratedGroupMixBlock(GroupMixBlock):
    """The MLP branch added chunk by chunk into the residual stream (x is the block's own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = (None if self.training or not kernels.inference_allowed(x, self.norm2.weight)
                  else row_kernel_of(self.mlp))
        if kernel is None:
            return super().forward(x)
        x = x + depthwise_conv_channels_last(x, self.pos_conv.weight, self.pos_conv.bias)
        x = x + self.attn(self.norm1(x))
        t = self.norm2(x)
        added = kernels.add_rows_(x, kernel, t, None, channels_first=False)
        return added if added is not None else x + self.mlp(t)


class AcceleratedGroupMixAttention(GroupMixAttention):
    """The fast path with its derived weights kept, and the qkv projection through oneDNN."""

    def _forward_fast(self, x: torch.Tensor, weights=None, qkv_linear=F.linear) -> torch.Tensor:
        if weights is None and kernels.inference_allowed(x, self.qkv.weight):
            with torch.no_grad():
                weights = derived(self, self.fast_weights)
            return super()._forward_fast(x, weights, kernels.linear)
        return super()._forward_fast(x, weights, qkv_linear)
