"""Slow, obvious float64 references shared by the tests."""

import torch
import torch.nn.functional as F


def dense_block_diagonal(weight: torch.Tensor) -> torch.Tensor:
    """A dense float64 (out, in) matrix with the blocks of a (G, out/G, in/G) weight on its
    diagonal and zeros elsewhere."""
    groups, out_g, in_g = weight.shape
    dense = torch.zeros(groups * out_g, groups * in_g, dtype=torch.float64)
    for g in range(groups):
        dense[g * out_g:(g + 1) * out_g, g * in_g:(g + 1) * in_g] = weight[g]
    return dense


def reference_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         eps: float) -> torch.Tensor:
    """LayerNorm over the last axis, mean and biased variance written out, in float64."""
    x = x.double()
    mean = x.sum(-1, keepdim=True) / x.shape[-1]
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / x.shape[-1]
    return (x - mean) / torch.sqrt(var + eps) * weight.detach().double() + bias.detach().double()


def reference_mlp(mlp, tokens: torch.Tensor, act=F.gelu, hidden_norm=None) -> torch.Tensor:
    """(..., C) tokens through a SchemeMlp's BD-MLP as two dense float64 matmuls;
    ``hidden_norm`` (float64 (..., hidden) -> same) between the activation and fc2."""
    w1 = dense_block_diagonal(mlp.fc1.weight.detach().double())
    w2 = dense_block_diagonal(mlp.fc2.weight.detach().double())
    h = tokens.double() @ w1.T
    if mlp.fc1.bias is not None:
        h = h + mlp.fc1.bias.detach().double()
    h = act(h)
    if hidden_norm is not None:
        h = hidden_norm(h)
    y = h @ w2.T
    if mlp.fc2.bias is not None:
        y = y + mlp.fc2.bias.detach().double()
    return y
