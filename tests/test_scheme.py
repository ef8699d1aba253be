"""SCHEME layers against float64 references written the slow, obvious way."""

import math

import pytest
import torch
from timm.layers import Mlp

from references import dense_block_diagonal, reference_mlp
from vitmix.layers import BlockDiagonalLinear, ChannelCovarianceAttention, SchemeMlp
from vitmix.layers.scheme import cosine_cca_weight


def reference_cca(x: torch.Tensor, scale: float, normalize_tokens: bool = False) -> torch.Tensor:
    """softmax(X^T X * s) per sample, covariance written out entry by entry, then X A^T."""
    b, c = x.shape[0], x.shape[-1]
    tokens = x.reshape(b, -1, c).double()
    n = tokens.shape[1]
    out = torch.empty_like(tokens)
    for i in range(b):
        cov = torch.zeros(c, c, dtype=torch.float64)
        for t in range(n):
            cov += torch.outer(tokens[i, t], tokens[i, t])
        if normalize_tokens:
            cov /= n
        logits = cov * scale
        attn = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        attn = attn / attn.sum(dim=1, keepdim=True)
        out[i] = tokens[i] @ attn.T
    return out.reshape(x.shape)


@pytest.mark.parametrize("groups,in_f,out_f", [(1, 12, 20), (2, 12, 20), (4, 16, 8), (3, 9, 6)])
@pytest.mark.parametrize("lead", [(5,), (2, 7), (2, 3, 4)])
def test_block_diagonal_linear_matches_dense_reference(groups, in_f, out_f, lead):
    layer = BlockDiagonalLinear(in_f, out_f, groups).double()
    x = torch.randn(*lead, in_f, dtype=torch.float64)
    expected = x @ dense_block_diagonal(layer.weight.detach()).T + layer.bias.detach()
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight.shape == (groups, out_f // groups, in_f // groups)
    assert layer.bias.shape == (out_f,)


def test_block_diagonal_linear_channels_first_matches_channels_last():
    layer = BlockDiagonalLinear(16, 24, 4).double()
    x = torch.randn(2, 16, 5, 3, dtype=torch.float64)
    expected = layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(layer.forward_channels_first(x), expected)


def test_block_diagonal_linear_group_isolation():
    """Group g's outputs depend on group g's inputs only."""
    layer = BlockDiagonalLinear(8, 12, 4, bias=False).double()
    x = torch.zeros(1, 8, dtype=torch.float64)
    x[0, 2:4] = torch.randn(2, dtype=torch.float64)  # group 1 only
    y = layer(x)[0]
    assert torch.count_nonzero(y[:3]) == 0 and torch.count_nonzero(y[6:]) == 0
    assert torch.count_nonzero(y[3:6]) == 3


def test_block_diagonal_linear_init_like_timm_linear():
    torch.manual_seed(0)
    layer = BlockDiagonalLinear(256, 512, 4)
    bound = 1 / math.sqrt(256 // 4)
    assert layer.weight.abs().max() <= bound
    # Uniform(-b, b) has standard deviation b / sqrt(3).
    assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    expected = dense_block_diagonal(layer.weight.detach())
    torch.testing.assert_close(layer.to_dense().double(), expected)


@pytest.mark.parametrize("shape", [(2, 9, 6), (3, 2, 4, 5), (1, 1, 7)])
@pytest.mark.parametrize("normalize_tokens", [False, True])
def test_cca_matches_covariance_formula(shape, normalize_tokens):
    scale = 0.37
    cca = ChannelCovarianceAttention(scale=scale, normalize_tokens=normalize_tokens)
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(cca(x), reference_cca(x, scale, normalize_tokens))


def test_cca_uses_transpose_not_reshape():
    """With N != C a reshape of X would give a different matrix; the covariance is X^T X."""
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    attn = ChannelCovarianceAttention(scale=1.0).attention(x)
    torch.testing.assert_close(attn, torch.softmax(x[0].T @ x[0], dim=-1)[None])
    # Each output channel is a convex combination of the input channels.
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, 4, dtype=torch.float64))
    assert (attn >= 0).all()


def test_cca_channels_first_matches_channels_last():
    cca = ChannelCovarianceAttention(scale=0.2)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    expected = cca(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(cca.forward_channels_first(x), expected)


def test_cca_has_no_parameters():
    assert sum(p.numel() for p in ChannelCovarianceAttention().parameters()) == 0


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("shape", [(2, 7, 16), (2, 3, 5, 16)])
def test_scheme_mlp_training_output_matches_reference(groups, shape):
    mlp = SchemeMlp(16, 64, groups=groups).double().train()
    x = torch.randn(*shape, dtype=torch.float64)
    a, cca_w = torch.softmax(mlp.mix_logits.detach(), 0)
    expected = a * reference_mlp(mlp, x) + cca_w * reference_cca(x, 64**-0.5)
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.cca_weight() == pytest.approx(float(cca_w))


def test_scheme_mlp_eval_output_is_scaled_mlp_only():
    mlp = SchemeMlp(16, 32, groups=4).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    a = torch.softmax(mlp.mix_logits.detach(), 0)[0]
    torch.testing.assert_close(mlp(x), a * reference_mlp(mlp, x))


def test_scheme_mlp_channels_first_matches_channels_last():
    torch.manual_seed(1)
    last = SchemeMlp(16, 64, groups=4).double().train()
    first = SchemeMlp(16, 64, groups=4, channels_first=True).double().train()
    first.load_state_dict(last.state_dict())
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(first(x), last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_scheme_mlp_without_cca_is_plain_bd_mlp():
    mlp = SchemeMlp(8, 16, groups=2, cca=False).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(mlp(x), reference_mlp(mlp, x))
    assert mlp.cca_weight() == 0.0
    assert not any("mix_logits" in n for n, _ in mlp.named_parameters())


def test_scheme_mlp_takes_timm_mlp_arguments():
    torch.manual_seed(0)
    dense = Mlp(12, 48, 12, act_layer=torch.nn.GELU, drop=0.0, bias=True)
    scheme = SchemeMlp(12, 48, 12, act_layer=torch.nn.GELU, drop=0.0, bias=True, groups=1,
                       cca=False)
    scheme.fc1.weight.data.copy_(dense.fc1.weight.data[None])
    scheme.fc1.bias.data.copy_(dense.fc1.bias.data)
    scheme.fc2.weight.data.copy_(dense.fc2.weight.data[None])
    scheme.fc2.bias.data.copy_(dense.fc2.bias.data)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(scheme(x), dense(x))


@pytest.mark.parametrize("channels_first", [False, True])
def test_gradients_reach_every_parameter(channels_first):
    mlp = SchemeMlp(8, 32, groups=4, channels_first=channels_first).train()
    x = torch.randn(2, 8, 3, 3) if channels_first else torch.randn(2, 9, 8)
    mlp(x).square().sum().backward()
    for name, p in mlp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cosine_schedule_decays_to_exactly_zero():
    mlp = SchemeMlp(8, 16, groups=2, cca_schedule="cosine").train()
    start = torch.softmax(mlp.mix_logits, 0)[1].item()
    assert not any(n == "mix_logits" for n, _ in mlp.named_parameters())  # a buffer, not learned
    weights = []
    for p in torch.linspace(0, 1, 11).tolist():
        mlp.set_progress(p)
        weights.append(mlp.cca_weight())
    assert weights[0] == pytest.approx(start)
    assert weights[5] == pytest.approx(start / 2)
    assert weights[-1] == 0.0
    assert all(w1 >= w2 for w1, w2 in zip(weights, weights[1:], strict=False))
    # At the end the training output is exactly the BD-MLP: CCA contributes nothing.
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(mlp.train()(x), mlp.eval()(x), rtol=0, atol=0)
    assert cosine_cca_weight(0.3, 1.0) == 0.0 and cosine_cca_weight(0.3, 0.0) == 0.3


def test_learned_schedule_ignores_progress():
    mlp = SchemeMlp(8, 16, groups=2)
    before = mlp.cca_weight()
    mlp.set_progress(1.0)
    assert mlp.cca_weight() == before


def test_fuse_mixing_matches_eval_output():
    mlp = SchemeMlp(16, 64, groups=4).eval()
    x = torch.randn(2, 10, 16)
    expected = mlp(x)
    weight_before = mlp.cca_weight()
    assert mlp.fuse_mixing() == pytest.approx(weight_before)
    assert not mlp.has_cca and mlp.mix_logits is None
    torch.testing.assert_close(mlp.train()(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(in_features=10, hidden_features=40, groups=4), "in_features=10"),
        (dict(in_features=16, hidden_features=30, groups=4), "hidden_features=30"),
        (dict(in_features=16, out_features=8, groups=4), "out_features == in_features"),
        (dict(in_features=16, groups=0), "groups must be a positive"),
        (dict(in_features=16, cca_schedule="linear"), "cca_schedule"),
    ],
)
def test_scheme_mlp_construction_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SchemeMlp(**kwargs)


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="expected 16 input channels.*got 12"):
        SchemeMlp(16, 32, groups=4)(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="expected 16 input channels.*got 12"):
        SchemeMlp(16, 32, groups=4, channels_first=True)(torch.randn(2, 12, 3, 3))
    with pytest.raises(ValueError, match="expected 6 input channels"):
        BlockDiagonalLinear(6, 6, 3)(torch.randn(4, 5))


def test_progress_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="progress must lie in"):
        SchemeMlp(8, 16, cca_schedule="cosine").set_progress(1.5)
