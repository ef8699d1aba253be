"""SCHEME layers against float64 references written the slow, obvious way."""

import copy
import inspect
import math
from functools import partial

import pytest
import timm
import torch
from timm.layers import LayerNorm2d, Mlp

from references import dense_block_diagonal, reference_layer_norm, reference_mlp
from vitmix.accelerate import accelerate
from vitmix.layers import BlockDiagonalLinear, ChannelCovarianceAttention, SchemeMlp
from vitmix.layers.scheme import cosine_cca_weight, shuffle_channels


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


@pytest.mark.parametrize("kwargs,message", [
    (dict(scale=0), "scale must be a positive number, got 0"),
    (dict(scale="auto"), "scale must be a positive number, got 'auto'"),
    (dict(normalize_tokens=1), "normalize_tokens must be True or False, got 1"),
])
def test_cca_construction_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChannelCovarianceAttention(**kwargs)


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


def test_scheme_mlp_signature_starts_with_timm_mlps():
    timm_params = list(inspect.signature(Mlp).parameters.values())
    ours = list(inspect.signature(SchemeMlp).parameters.values())
    assert [(p.name, p.default) for p in ours[:len(timm_params)]] == [
        (p.name, p.default) for p in timm_params]
    # SCHEME's own arguments come after, by keyword only.
    assert [(p.name, p.kind) for p in ours[len(timm_params):]] == [
        (name, inspect.Parameter.KEYWORD_ONLY)
        for name in ("groups", "cca", "cca_schedule", "channels_first", "channel_shuffle")]


def _copy_dense_into_scheme(dense: Mlp, scheme: SchemeMlp) -> None:
    """A timm Mlp's weights into a SchemeMlp with one group (linear or 1x1-conv layers)."""
    with torch.no_grad():
        for ours, theirs in ((scheme.fc1, dense.fc1), (scheme.fc2, dense.fc2)):
            ours.weight.copy_(theirs.weight.reshape(ours.weight.shape))
            if theirs.bias is not None:
                ours.bias.copy_(theirs.bias)
        if not isinstance(dense.norm, torch.nn.Identity):
            scheme.norm.load_state_dict(dense.norm.state_dict())


@pytest.mark.parametrize("use_conv,norm_layer,shape", [
    (False, None, (2, 5, 12)),
    (False, torch.nn.LayerNorm, (2, 5, 12)),
    (True, None, (2, 12, 3, 4)),
    (True, LayerNorm2d, (2, 12, 3, 4)),
])
def test_scheme_mlp_takes_timm_mlp_arguments(use_conv, norm_layer, shape):
    """Built with timm's arguments (tuples for bias and drop included), one group and no CCA,
    a SchemeMlp computes what timm's Mlp computes."""
    torch.manual_seed(0)
    args = (12, 48, 12, torch.nn.GELU, norm_layer, (True, False), (0.0, 0.0), use_conv)
    dense = Mlp(*args).double()
    scheme = SchemeMlp(*args, groups=1, cca=False).double()
    if norm_layer is not None:
        with torch.no_grad():
            dense.norm.weight.normal_()
            dense.norm.bias.normal_()
    _copy_dense_into_scheme(dense, scheme)
    assert scheme.fc2.bias is None and scheme.channels_first == use_conv
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(scheme(x), dense(x))


def _scheme_with_norm(norm_layer, use_conv: bool) -> SchemeMlp:
    mlp = SchemeMlp(16, 64, groups=4, cca=False, norm_layer=norm_layer, use_conv=use_conv)
    mlp = mlp.double()
    with torch.no_grad():
        mlp.norm.weight.normal_()
        mlp.norm.bias.normal_()
    return mlp


@pytest.mark.parametrize("groups", [1, 4])
def test_hidden_norm_spans_the_whole_hidden_width(groups):
    """With G groups the norm still sees all hidden channels at once, as timm's Mlp does."""
    mlp = SchemeMlp(16, 64, groups=groups, cca=False, norm_layer=torch.nn.LayerNorm).double()
    with torch.no_grad():
        mlp.norm.weight.normal_()
        mlp.norm.bias.normal_()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    norm = partial(reference_layer_norm, weight=mlp.norm.weight, bias=mlp.norm.bias,
                   eps=mlp.norm.eps)
    torch.testing.assert_close(mlp(x), reference_mlp(mlp, x, hidden_norm=norm))
    assert mlp.norm.normalized_shape == (64,)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_hidden_norm_on_maps(memory_format):
    """use_conv=True: a 2-D norm (timm's LayerNorm2d) on the (B, hidden, H, W) map, whatever
    the input's memory layout."""
    mlp = _scheme_with_norm(LayerNorm2d, use_conv=True)
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64).contiguous(memory_format=memory_format)
    norm = partial(reference_layer_norm, weight=mlp.norm.weight, bias=mlp.norm.bias,
                   eps=mlp.norm.eps)
    expected = reference_mlp(mlp, x.permute(0, 2, 3, 1), hidden_norm=norm).permute(0, 3, 1, 2)
    torch.testing.assert_close(mlp(x), expected)


def test_hidden_norm_in_accelerated_float32_cpu_inference():
    # The fused kernels have no hidden norm: accelerate() must leave such an MLP plain.
    torch.manual_seed(0)
    mlp = SchemeMlp(16, 64, groups=4, cca=False, norm_layer=torch.nn.LayerNorm).eval()
    with torch.no_grad():
        mlp.norm.weight.normal_()
    x = torch.randn(2, 7, 16)
    expected = mlp(x)  # parameters that require grad: the plain path
    accelerate(mlp)
    assert type(mlp) is SchemeMlp
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), expected)


def test_hidden_norm_keeps_fuse_mixing_exact():
    mlp = SchemeMlp(16, 64, groups=4, norm_layer=torch.nn.LayerNorm).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    expected = mlp(x)
    mlp.fuse_mixing()
    torch.testing.assert_close(mlp(x), expected)


def test_no_norm_keeps_the_state_dict_keys():
    keys = set(SchemeMlp(16, 64, groups=4).state_dict())
    assert keys == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "mix_logits", "progress"}
    with_norm = set(SchemeMlp(16, 64, groups=4, norm_layer=torch.nn.LayerNorm).state_dict())
    assert with_norm - keys == {"norm.weight", "norm.bias"}


def test_use_conv_means_channels_first():
    torch.manual_seed(0)
    legacy = SchemeMlp(16, 64, groups=4, channels_first=True).double().train()
    timm_name = SchemeMlp(16, 64, groups=4, use_conv=True).double().train()
    timm_name.load_state_dict(legacy.state_dict())
    assert timm_name.channels_first and legacy.channels_first
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(timm_name(x), legacy(x))


@pytest.mark.parametrize("cca_schedule", ["learned", "cosine"])
def test_device_and_dtype_reach_every_tensor(cca_schedule):
    mlp = SchemeMlp(16, 64, groups=4, norm_layer=torch.nn.LayerNorm, cca_schedule=cca_schedule,
                    device="meta", dtype=torch.float64)
    tensors = dict(mlp.state_dict())
    assert len(tensors) == 8
    assert all(t.device.type == "meta" and t.dtype == torch.float64 for t in tensors.values())
    # Built without memory, then materialised and initialised.
    mlp.to_empty(device="cpu")
    with torch.no_grad():
        for t in mlp.state_dict().values():
            t.fill_(float("nan"))
    for m in mlp.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    assert all(torch.isfinite(t).all() for t in mlp.state_dict().values())
    assert mlp.progress.item() == 0.0
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    assert torch.isfinite(mlp.train()(x)).all() and 0 < mlp.cca_weight() < 1


def test_block_diagonal_linear_device_and_dtype():
    layer = BlockDiagonalLinear(8, 12, 4, device="meta", dtype=torch.float16)
    assert {(p.device.type, p.dtype) for p in layer.parameters()} == {("meta", torch.float16)}


@pytest.mark.parametrize("mlp_layer_args", [dict(), dict(scale_mlp_norm=True)])
def test_scheme_mlp_in_timm_vision_transformer(mlp_layer_args):
    """timm builds its Mlp with every argument of Mlp's signature (norm_layer, device, ...)."""
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5,
                              mlp_layer=partial(SchemeMlp, groups=4), **mlp_layer_args)
    mlps = [b.mlp for b in model.blocks]
    assert all(isinstance(m, SchemeMlp) and m.groups == 4 and m.hidden_features == 768
               for m in mlps)
    assert all(m.has_norm == bool(mlp_layer_args) for m in mlps)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    out.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_scheme_mlp_in_timm_mlp_mixer():
    """MLP-Mixer builds token and channel MLPs from mlp_layer: SCHEME takes both."""
    model = timm.create_model("mixer_s16_224", img_size=64, num_classes=5,
                              mlp_layer=partial(SchemeMlp, groups=4))
    block = model.blocks[0]
    assert isinstance(block.mlp_tokens, SchemeMlp) and block.mlp_tokens.in_features == 16
    assert isinstance(block.mlp_channels, SchemeMlp) and block.mlp_channels.in_features == 512
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


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
        (dict(in_features=16, groups=0), "groups must be a positive integer, got 0"),
        (dict(in_features=16, groups=2.5), "groups must be a positive integer, got 2.5"),
        (dict(in_features=16, groups=True), "groups must be a positive integer, got True"),
        (dict(in_features=16, cca_schedule="linear"),
         "cca_schedule must be one of 'learned', 'cosine', got 'linear'"),
        (dict(in_features=0), "in_features must be a positive integer, got 0"),
        (dict(in_features=16.0), "in_features must be a positive integer, got 16.0"),
        (dict(in_features=16, hidden_features=-8), "hidden_features must be a positive integer"),
        (dict(in_features=16, out_features="16", cca=False), "out_features must be a positive"),
        (dict(in_features=16, drop=1.5), r"drop must be a probability in \[0, 1\], got 1.5"),
        (dict(in_features=16, drop=(0.1, -0.1)), r"drop\[1\] must be a probability"),
        (dict(in_features=16, drop=(0.1,)), r"drop must be one value or a pair, got \(0.1,\)"),
        (dict(in_features=16, bias="yes"), "bias must be True or False, got 'yes'"),
        (dict(in_features=16, bias=(True, 0)), r"bias\[1\] must be True or False, got 0"),
        (dict(in_features=16, cca=1), "cca must be True or False, got 1"),
        (dict(in_features=16, use_conv="no"), "use_conv must be True or False"),
        (dict(in_features=16, channels_first=None), "channels_first must be True or False"),
        (dict(in_features=16, channel_shuffle="yes"),
         "channel_shuffle must be True or False, got 'yes'"),
        (dict(in_features=16, act_layer="gelu"), "act_layer must be a module class"),
        (dict(in_features=16, norm_layer=0.1), r"norm_layer must be a module class .*\(or None\)"),
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


@pytest.mark.parametrize("args,message", [
    ((6, 6, 0), "groups must be a positive integer, got 0"),
    ((6, 6, 1.5), "groups must be a positive integer, got 1.5"),
    ((0, 6), "in_features must be a positive integer, got 0"),
    ((6, 6, 4), "in_features=6 is not divisible by groups=4"),
    ((6, 6, 1, "no"), "bias must be True or False"),
])
def test_block_diagonal_linear_construction_errors(args, message):
    with pytest.raises(ValueError, match=message):
        BlockDiagonalLinear(*args)


def test_progress_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="progress must lie in"):
        SchemeMlp(8, 16, cca_schedule="cosine").set_progress(1.5)


@pytest.mark.parametrize("shape", [(5, 8), (8,)], ids=["batch_of_tokens", "lone_token"])
def test_single_tokens_work_in_training_and_in_eval_alike(shape):
    """(B, C) and (C,), as timm's Mlp takes them, in every mode: one token per sample. The CCA
    of one token, written out: A[i, j] = softmax_j(x_i x_j s), output_i = sum_j A[i, j] x_j."""
    torch.manual_seed(0)
    mlp = SchemeMlp(8, 32, groups=2)
    x = torch.randn(shape)
    a, cca_w = (float(w.detach()) for w in mlp.mix_weights())
    scale = 32**-0.5
    xd = x.double().reshape(-1, 8)
    attn = torch.softmax(xd[:, :, None] * xd[:, None, :] * scale, dim=-1)
    cca = torch.einsum("bij,bj->bi", attn, xd).reshape(shape)
    mlp_out = reference_mlp(mlp, x)
    torch.testing.assert_close(mlp.train()(x).double(), a * mlp_out + cca_w * cca,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mlp.eval()(x).double(), a * mlp_out, rtol=1e-5, atol=1e-6)
    deployed = accelerate(copy.deepcopy(mlp)).eval()
    with torch.no_grad():
        torch.testing.assert_close(deployed(x).double(), a * mlp_out, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- the authors' channel shuffle

def reference_shuffled_mlp(mlp, tokens: torch.Tensor) -> torch.Tensor:
    """(..., C) tokens through fc1, GELU, ShuffleNet's channel shuffle, fc2, in float64: hidden
    channel o after the shuffle is channel (o % G) * (hidden / G) + o // G before it."""
    groups, hidden = mlp.groups, mlp.hidden_features
    per_group = hidden // groups
    order = [(o % groups) * per_group + o // groups for o in range(hidden)]
    w1 = dense_block_diagonal(mlp.fc1.weight.detach().double())
    w2 = dense_block_diagonal(mlp.fc2.weight.detach().double())
    h = torch.nn.functional.gelu(tokens.double() @ w1.T + mlp.fc1.bias.detach().double())
    return h[..., order] @ w2.T + mlp.fc2.bias.detach().double()


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("layout", ["tokens", "maps_last", "maps_first", "maps_first_nhwc"])
@pytest.mark.parametrize("training", [False, True])
def test_channel_shuffle_matches_reference(groups, layout, training):
    channels_first = layout.startswith("maps_first")
    mlp = SchemeMlp(16, 96, groups=groups, channel_shuffle=True,
                    channels_first=channels_first).double().train(training)
    shape = (2, 7, 16) if layout == "tokens" else (2, 3, 5, 16)
    tokens = torch.randn(*shape, dtype=torch.float64)
    a, cca_w = torch.softmax(mlp.mix_logits.detach(), 0)
    expected = a * reference_shuffled_mlp(mlp, tokens)
    if training:
        expected = expected + cca_w * reference_cca(tokens, 96**-0.5)
    x = tokens
    if channels_first:
        x = tokens.permute(0, 3, 1, 2)
        x = x.contiguous() if layout == "maps_first" else x.contiguous(
            memory_format=torch.channels_last)
        expected = expected.permute(0, 3, 1, 2)
    torch.testing.assert_close(mlp(x), expected)


def test_shuffle_channels_is_shufflenets():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    assert shuffle_channels(x, 3, dim=1).flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3,
                                                                 7, 11]
    torch.testing.assert_close(shuffle_channels(x.view(1, 12), 3, dim=-1),
                               shuffle_channels(x, 3, dim=1).view(1, 12))


def test_channel_shuffle_mixes_groups_and_cannot_fold_into_fc2():
    # Without the shuffle, output group 0 reads input group 0 only (block diagonal); with it,
    # every output group reads every input group, so no permutation of fc2's (or fc1's) block
    # diagonal weight computes it: the shuffled MLP is a different function class.
    torch.manual_seed(0)
    plain = SchemeMlp(8, 32, groups=4, cca=False).double()
    shuffled = SchemeMlp(8, 32, groups=4, cca=False, channel_shuffle=True).double()
    shuffled.load_state_dict(plain.state_dict())
    x = torch.randn(8, dtype=torch.float64)
    blocks = [torch.autograd.functional.jacobian(m, x).view(4, 2, 4, 2).abs().sum((1, 3))
              for m in (plain, shuffled)]
    assert torch.equal(blocks[0] > 0, torch.eye(4, dtype=torch.bool))
    assert bool((blocks[1] > 0).all())


def test_channel_shuffle_keeps_state_dict_and_one_group_is_identity():
    torch.manual_seed(2)
    plain = SchemeMlp(16, 64, groups=1).double().eval()
    shuffled = SchemeMlp(16, 64, groups=1, channel_shuffle=True).double().eval()
    assert shuffled.state_dict().keys() == plain.state_dict().keys()
    shuffled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(shuffled(x), plain(x))
    assert not shuffled.shuffles
    assert "channel_shuffle=True" in repr(SchemeMlp(16, 64, groups=4, channel_shuffle=True))


def test_channel_shuffle_survives_fuse_mixing():
    mlp = SchemeMlp(16, 64, groups=4, channel_shuffle=True).eval()
    x = torch.randn(2, 10, 16)
    expected = mlp(x)
    mlp.fuse_mixing()
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-5)
