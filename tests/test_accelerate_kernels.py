"""vitmix.accelerate's oneDNN kernels and the accelerated linear and MLP modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitmix.accelerate import accelerate, kernels
from vitmix.accelerate.modules import row_kernel_of
from vitmix.layers.token_mixers import SelfAttention

pytestmark = pytest.mark.skipif(not kernels.HAS_FUSED_CONV, reason="no oneDNN in this torch")


@pytest.fixture
def kernel_calls(monkeypatch) -> list:
    """Counts calls of the oneDNN kernel, so a test knows which path ran."""
    calls = []
    original = kernels.conv1x1

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "conv1x1", spy)
    return calls


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_a_float64_reference(kernel_calls, shape, bias):
    weight = torch.randn(20, 12)
    b = torch.randn(20) if bias else None
    x = torch.randn(*shape)
    with torch.no_grad():
        got = kernels.linear(x, weight, b)
    expected = x.double() @ weight.double().t() + (b.double() if bias else 0)
    assert got.shape == (*shape[:-1], 20)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert len(kernel_calls) == 1


def test_linear_reads_strided_tokens(kernel_calls):
    # (B, C, H, W) maps in NCHW memory give non-contiguous (B, N, C) tokens.
    maps = torch.randn(2, 12, 3, 5)
    tokens = maps.flatten(2).transpose(1, 2)
    weight = torch.randn(8, 12)
    with torch.no_grad():
        got = kernels.linear(tokens, weight, None)
    torch.testing.assert_close(got.double(), tokens.double() @ weight.double().t(),
                               rtol=1e-5, atol=1e-5)


def test_plain_path_for_autograd_other_dtypes_flop_counting_and_switch(kernel_calls,
                                                                         monkeypatch):
    layer = accelerate(SelfAttention(12, head_dim=6)).proj  # nn.Linear(12, 12), accelerated
    assert type(layer).__name__ == "AcceleratedLinear"
    x = torch.randn(4, 12)
    out = layer(x)
    out.sum().backward()  # autograd: the plain forward ran
    assert layer.weight.grad is not None and kernel_calls == []
    with torch.no_grad():
        layer.double()(x.double())
        layer.float()
        with FlopCounterMode(display=False) as counter:
            layer(x)
        assert kernel_calls == []
        assert counter.get_total_flops() == 2 * 4 * 12 * 12
        monkeypatch.setenv("VITMIX_ACCELERATE", "0")
        torch.testing.assert_close(layer(x), x @ layer.weight.t() + layer.bias)
        assert kernel_calls == []
        monkeypatch.setenv("VITMIX_ACCELERATE", "1")
        layer(x)
    assert len(kernel_calls) == 1


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_self_attention_inference_equals_its_autograd_path(kernel_calls, memory_format):
    attn = accelerate(SelfAttention(64, head_dim=16, qkv_bias=True).eval())
    x = torch.randn(2, 64, 5, 4).contiguous(memory_format=memory_format)
    expected = attn(x)  # grad enabled: nn.Linear
    assert kernel_calls == []
    with torch.inference_mode():
        got = attn(x)
    assert len(kernel_calls) == 2  # qkv and proj
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _mlp_reference(mlp, tokens: torch.Tensor) -> torch.Tensor:
    """float64 fc2(gelu(fc1(x))) of a timm Mlp on (..., C) tokens."""
    w1 = mlp.fc1.weight.double().reshape(mlp.fc1.weight.shape[0], -1)
    w2 = mlp.fc2.weight.double().reshape(mlp.fc2.weight.shape[0], -1)
    h = torch.nn.functional.gelu(tokens.double() @ w1.t() + mlp.fc1.bias.double())
    return h @ w2.t() + mlp.fc2.bias.double()


@pytest.mark.parametrize("chunk_bytes,chunks", [(kernels.HIDDEN_CHUNK_BYTES, 1),
                                                (3 * 48 * 4, 4)])  # 10 rows, 3 per chunk
def test_timm_mlp_on_tokens_matches_a_float64_reference(kernel_calls, monkeypatch, chunk_bytes,
                                                        chunks):
    from timm.layers import Mlp

    monkeypatch.setattr(kernels, "HIDDEN_CHUNK_BYTES", chunk_bytes)
    mlp = accelerate(Mlp(12, 48).eval())
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        got = mlp(x)
    torch.testing.assert_close(got.double(), _mlp_reference(mlp, x), rtol=1e-5, atol=1e-5)
    assert len(kernel_calls) == 2 * chunks


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_timm_conv_mlp_on_maps_keeps_the_layout(kernel_calls, monkeypatch, memory_format):
    from timm.layers import Mlp

    monkeypatch.setattr(kernels, "HIDDEN_CHUNK_BYTES", 5 * 32 * 4)
    mlp = accelerate(Mlp(8, 32, use_conv=True).eval())
    x = torch.randn(2, 8, 3, 4).contiguous(memory_format=memory_format)
    with torch.no_grad():
        got = mlp(x)
    expected = _mlp_reference(mlp, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=memory_format)
    assert len(kernel_calls) == 2 * 5  # 24 rows, 5 per chunk


def test_accelerate_leaves_everything_else_as_it_is(kernel_calls):
    from timm.layers import Mlp

    other = nn.Sequential(nn.Linear(4, 4))  # a linear layer outside attention
    normed = Mlp(4, 8, norm_layer=nn.LayerNorm).eval()  # a norm between fc1 and fc2
    for module in (other, normed):
        kind = {name: type(m) for name, m in module.named_modules()}
        accelerate(module)
        assert {name: type(m) for name, m in module.named_modules()} == kind
    with torch.no_grad():
        other(torch.randn(3, 4)), normed(torch.randn(3, 4))
    assert kernel_calls == []


# ---- add_rows_: a block's MLP branch added into its residual stream --------------------------


def _scheme_mlp(groups: int, cca_left: bool):
    from vitmix.layers import SchemeMlp

    mlp = SchemeMlp(24, 96, groups=groups, cca=True, channels_first=True)
    with torch.no_grad():
        mlp.mix_logits.copy_(torch.tensor([0.3, -0.2]))  # a != 1, so folding it in matters
    if not cca_left:
        mlp.fuse_mixing()
    return accelerate(mlp.eval())


def _timm_conv_mlp(groups: int, cca_left: bool):
    from timm.layers import Mlp

    return accelerate(Mlp(24, 96, use_conv=True).eval())


def _branch_reference(mlp, x: torch.Tensor, residual: torch.Tensor, scale) -> torch.Tensor:
    """float64 residual + scale * mlp(x) on (B, C, H, W) maps, through the module's plain path."""
    import copy

    twin = copy.deepcopy(mlp).double()  # float64 never takes the fused kernels
    with torch.no_grad():
        y = twin(x.double())
    return residual.double() + (scale.double().view(1, -1, 1, 1) if scale is not None else 1) * y


@pytest.mark.parametrize("make_mlp,groups,cca_left,kernels_per_chunk", [
    (_timm_conv_mlp, 1, False, 2),
    (_scheme_mlp, 4, False, 8),  # 6 channels per group: one dense chain per group
    (_scheme_mlp, 4, True, 8),   # eval with the CCA branch still there: a is folded in
    (_scheme_mlp, 1, True, 2),
])
@pytest.mark.parametrize("with_scale", [True, False])
def test_add_rows_adds_into_the_residual_in_place(kernel_calls, monkeypatch, make_mlp, groups,
                                                 cca_left, kernels_per_chunk, with_scale):
    hidden_per_kernel = 96 // (kernels_per_chunk // 2)
    monkeypatch.setattr(kernels, "HIDDEN_CHUNK_BYTES", 7 * hidden_per_kernel * 4)  # 7 rows
    mlp = make_mlp(groups, cca_left)
    x = torch.randn(2, 24, 3, 5).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 24, 3, 5).contiguous(memory_format=torch.channels_last)
    scale = torch.rand(24) + 0.5 if with_scale else None
    expected = _branch_reference(mlp, x, residual, scale)
    before = x.clone()
    with torch.no_grad():
        got = kernels.add_rows_(residual, row_kernel_of(mlp), x, scale, channels_first=True)
    assert got is residual  # written in place
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    assert len(kernel_calls) == kernels_per_chunk * 5  # 30 rows, 7 per chunk


def test_add_rows_on_tokens(kernel_calls):
    from timm.layers import Mlp

    mlp = accelerate(Mlp(12, 48).eval())
    x, residual = torch.randn(2, 3, 4, 12), torch.randn(2, 3, 4, 12)
    expected = residual.double() + _mlp_reference(mlp, x)
    with torch.no_grad():
        got = kernels.add_rows_(residual, row_kernel_of(mlp), x, None, channels_first=False)
    assert got is residual and len(kernel_calls) == 2
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_add_rows_refuses_a_residual_whose_channels_are_not_innermost(kernel_calls):
    mlp = _scheme_mlp(4, False)
    x, residual = torch.randn(2, 24, 3, 5), torch.randn(2, 24, 3, 5)  # channels-first memory
    kept = residual.clone()
    with torch.no_grad():
        assert kernels.add_rows_(residual, row_kernel_of(mlp), x, None, True) is None
    torch.testing.assert_close(residual, kept, rtol=0, atol=0)
    assert kernel_calls == []


def test_no_row_kernel_in_training_with_cca():
    # The CCA branch's output depends on the whole map, not on each row.
    assert row_kernel_of(_scheme_mlp(4, True).train()) is None
    assert row_kernel_of(_scheme_mlp(4, True).eval()) is not None
    assert row_kernel_of(nn.Linear(3, 3)) is None
