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


def reference_mlp(mlp, tokens: torch.Tensor, act=F.gelu) -> torch.Tensor:
    """(..., C) tokens through a SchemeMlp's BD-MLP as two dense float64 matmuls."""
    w1 = dense_block_diagonal(mlp.fc1.weight.detach().double())
    w2 = dense_block_diagonal(mlp.fc2.weight.detach().double())
    h = tokens.double() @ w1.T
    if mlp.fc1.bias is not None:
        h = h + mlp.fc1.bias.detach().double()
    y = act(h) @ w2.T
    if mlp.fc2.bias is not None:
        y = y + mlp.fc2.bias.detach().double()
    return y
