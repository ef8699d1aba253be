"""The oneDNN inference kernels behind SelfAttention, GroupMixAttention and SchemeMlp."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitmix.layers import onednn
from vitmix.layers.token_mixers import SelfAttention

pytestmark = pytest.mark.skipif(not onednn.HAS_FUSED_CONV, reason="no oneDNN in this torch")


@pytest.fixture
def kernel_calls(monkeypatch) -> list:
    """Counts calls of the oneDNN kernel, so a test knows which path ran."""
    calls = []
    original = onednn.conv1x1

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(onednn, "conv1x1", spy)
    return calls


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_a_float64_reference(kernel_calls, shape, bias):
    weight = torch.randn(20, 12)
    b = torch.randn(20) if bias else None
    x = torch.randn(*shape)
    with torch.no_grad():
        got = onednn.linear_inference(x, weight, b)
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
        got = onednn.linear_inference(tokens, weight, None)
    torch.testing.assert_close(got.double(), tokens.double() @ weight.double().t(),
                               rtol=1e-5, atol=1e-5)


def test_plain_path_for_autograd_other_dtypes_and_flop_counting(kernel_calls):
    layer = nn.Linear(12, 6)
    x = torch.randn(4, 12)
    out = onednn.apply_linear(layer, x)
    out.sum().backward()  # autograd: the module itself ran
    assert layer.weight.grad is not None and kernel_calls == []
    with torch.no_grad():
        onednn.apply_linear(layer.double(), x.double())
        layer.float()
        with FlopCounterMode(display=False) as counter:
            onednn.apply_linear(layer, x)
    assert kernel_calls == []
    assert counter.get_total_flops() == 2 * 4 * 12 * 6
    with torch.no_grad():
        onednn.apply_linear(layer, x)
    assert len(kernel_calls) == 1


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_self_attention_inference_equals_its_autograd_path(kernel_calls, memory_format):
    attn = SelfAttention(64, head_dim=16, qkv_bias=True).eval()
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


@pytest.mark.parametrize("chunk_bytes,chunks", [(onednn.HIDDEN_CHUNK_BYTES, 1),
                                                (3 * 48 * 4, 4)])  # 10 rows, 3 per chunk
def test_timm_mlp_on_tokens_matches_a_float64_reference(kernel_calls, monkeypatch, chunk_bytes,
                                                        chunks):
    from timm.layers import Mlp

    monkeypatch.setattr(onednn, "HIDDEN_CHUNK_BYTES", chunk_bytes)
    mlp = Mlp(12, 48).eval()
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        got = onednn.apply_mlp(mlp, x)
    torch.testing.assert_close(got.double(), _mlp_reference(mlp, x), rtol=1e-5, atol=1e-5)
    assert len(kernel_calls) == 2 * chunks


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_timm_conv_mlp_on_maps_keeps_the_layout(kernel_calls, monkeypatch, memory_format):
    from timm.layers import Mlp

    monkeypatch.setattr(onednn, "HIDDEN_CHUNK_BYTES", 5 * 32 * 4)
    mlp = Mlp(8, 32, use_conv=True).eval()
    x = torch.randn(2, 8, 3, 4).contiguous(memory_format=memory_format)
    with torch.no_grad():
        got = onednn.apply_mlp(mlp, x)
    expected = _mlp_reference(mlp, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=memory_format)
    assert len(kernel_calls) == 2 * 5  # 24 rows, 5 per chunk


def test_apply_mlp_calls_anything_else_as_it_is(kernel_calls):
    from timm.layers import Mlp

    other = nn.Sequential(nn.Linear(4, 4))
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(onednn.apply_mlp(other, x), other(x))
        normed = Mlp(4, 8, norm_layer=nn.LayerNorm).eval()  # a norm between fc1 and fc2
        torch.testing.assert_close(onednn.apply_mlp(normed, x), normed(x))
    assert kernel_calls == []


# ---- add_mlp_: a block's MLP branch added into its residual stream --------------------------


def _scheme_mlp(groups: int, cca_left: bool):
    from vitmix.layers import SchemeMlp

    mlp = SchemeMlp(24, 96, groups=groups, cca=True, channels_first=True)
    with torch.no_grad():
        mlp.mix_logits.copy_(torch.tensor([0.3, -0.2]))  # a != 1, so folding it in matters
    if not cca_left:
        mlp.fuse_mixing()
    return mlp.eval()


def _timm_conv_mlp(groups: int, cca_left: bool):
    from timm.layers import Mlp

    return Mlp(24, 96, use_conv=True).eval()


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
def test_add_mlp_adds_into_the_residual_in_place(kernel_calls, monkeypatch, make_mlp, groups,
                                                 cca_left, kernels_per_chunk, with_scale):
    hidden_per_kernel = 96 // (kernels_per_chunk // 2)
    monkeypatch.setattr(onednn, "HIDDEN_CHUNK_BYTES", 7 * hidden_per_kernel * 4)  # 7 rows
    mlp = make_mlp(groups, cca_left)
    x = torch.randn(2, 24, 3, 5).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 24, 3, 5).contiguous(memory_format=torch.channels_last)
    scale = torch.rand(24) + 0.5 if with_scale else None
    expected = _branch_reference(mlp, x, residual, scale)
    before = x.clone()
    with torch.no_grad():
        got = onednn.add_mlp_(residual, mlp, x, scale, channels_first=True)
    assert got is residual  # written in place
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    assert len(kernel_calls) == kernels_per_chunk * 5  # 30 rows, 7 per chunk


def test_add_mlp_on_tokens(kernel_calls):
    from timm.layers import Mlp

    mlp = Mlp(12, 48).eval()
    x, residual = torch.randn(2, 3, 4, 12), torch.randn(2, 3, 4, 12)
    expected = residual.double() + _mlp_reference(mlp, x)
    with torch.no_grad():
        got = onednn.add_mlp_(residual, mlp, x)
    assert got is residual and len(kernel_calls) == 2
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_add_mlp_computes_a_new_tensor_where_the_kernels_do_not_apply(kernel_calls):
    scale = torch.rand(24) + 0.5
    x = torch.randn(2, 24, 3, 5)
    cases = {
        # channels-first memory: the residual's rows are not contiguous, so it is not touched
        "channels first": (_scheme_mlp(4, False), torch.no_grad),
        # training mode with CCA: the output depends on the whole map, not on each row
        "training with CCA": (_scheme_mlp(4, True).train(), torch.no_grad),
        # autograd needs the plain ops
        "autograd": (_scheme_mlp(4, False), torch.enable_grad),
    }
    for name, (mlp, context) in cases.items():
        residual = torch.randn(2, 24, 3, 5)
        if name != "channels first":
            x_in = x.contiguous(memory_format=torch.channels_last)
            residual = residual.contiguous(memory_format=torch.channels_last)
        else:
            x_in = x
        kept = residual.clone()
        torch.manual_seed(0)
        expected = residual + scale.view(1, -1, 1, 1) * mlp(x_in)
        with context():
            torch.manual_seed(0)
            got = onednn.add_mlp_(residual, mlp, x_in, scale, channels_first=True)
        assert got is not residual, name
        torch.testing.assert_close(residual, kept, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=name)
