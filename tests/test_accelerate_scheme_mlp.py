"""accelerate() on SchemeMlp: the fused oneDNN kernels against float64 references, and the plain
path wherever they do not apply."""

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import vitmix  # noqa: F401  (registers the models)
from references import reference_mlp
from vitmix.accelerate import accelerate, kernels
from vitmix.accelerate.modules import PER_GROUP_KERNELS_MAX_WIDTH, AcceleratedSchemeMlp
from vitmix.layers import SchemeMlp

pytestmark = pytest.mark.skipif(not kernels.HAS_FUSED_CONV, reason="no oneDNN in this torch")


# ---- the fused CPU inference path of SchemeMlp ------------------------------------------------


@pytest.fixture
def fused_calls(monkeypatch) -> list:
    """Records the post-op of every call of the fused kernel, so a test knows which path ran."""
    calls = []
    original = kernels.conv1x1

    def spy(*args):
        calls.append(args[4])
        return original(*args)

    monkeypatch.setattr(kernels, "conv1x1", spy)
    return calls


def fused_mlp(groups: int, channels_first: bool, act_layer=nn.GELU, bias=True) -> SchemeMlp:
    mlp = SchemeMlp(24, 96, groups=groups, cca=True, act_layer=act_layer, bias=bias,
                    channels_first=channels_first)
    mlp.fuse_mixing()
    return accelerate(mlp.eval())


ACTIVATIONS = [
    (nn.GELU, lambda h: torch.nn.functional.gelu(h), "gelu"),
    (lambda: nn.GELU(approximate="tanh"),
     lambda h: torch.nn.functional.gelu(h, approximate="tanh"), "gelu"),
    (nn.ReLU, torch.relu, "relu"),
    (nn.SiLU, torch.nn.functional.silu, "swish"),
    (nn.Hardswish, torch.nn.functional.hardswish, "none"),  # applied after the kernel
]


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("act_layer,act,post_op", ACTIVATIONS)
def test_fused_path_matches_float64_reference_on_tokens(fused_calls, groups, act_layer, act,
                                                        post_op):
    mlp = fused_mlp(groups, channels_first=False, act_layer=act_layer)
    x = torch.randn(3, 10, 24)
    with torch.inference_mode():
        got = mlp(x)
    torch.testing.assert_close(got.double(), reference_mlp(mlp, x, act), rtol=1e-5, atol=1e-5)
    # Per group: fc1 with its activation, then fc2.
    assert fused_calls == [post_op, "none"] * groups


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_path_matches_reference_on_maps_and_keeps_the_layout(fused_calls, memory_format,
                                                                   bias):
    mlp = fused_mlp(4, channels_first=True, bias=bias)
    x = torch.randn(2, 24, 5, 3).contiguous(memory_format=memory_format)
    with torch.no_grad():
        got = mlp(x)
    expected = reference_mlp(mlp, x.permute(0, 2, 3, 1), torch.nn.functional.gelu)
    torch.testing.assert_close(got.double(), expected.permute(0, 3, 1, 2), rtol=1e-5,
                               atol=1e-5)
    assert got.is_contiguous(memory_format=memory_format)
    assert len(fused_calls) == 2 * 4


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_wide_groups_take_one_grouped_kernel_per_layer(fused_calls, memory_format):
    # Past PER_GROUP_KERNELS_MAX_WIDTH input channels per group, one grouped kernel per layer.
    dim = 2 * (PER_GROUP_KERNELS_MAX_WIDTH + 8)
    mlp = SchemeMlp(dim, 2 * dim, groups=2, cca=True, channels_first=True)
    mlp.fuse_mixing()
    accelerate(mlp.eval())
    x = torch.randn(2, dim, 3, 4).contiguous(memory_format=memory_format)
    with torch.no_grad():
        got = mlp(x)
    expected = reference_mlp(mlp, x.permute(0, 2, 3, 1), torch.nn.functional.gelu)
    torch.testing.assert_close(got.double(), expected.permute(0, 3, 1, 2), rtol=1e-5,
                               atol=1e-5)
    assert fused_calls == ["gelu", "none"]
    assert got.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("shape", [(2, 24, 7), (2, 24, 2, 3, 4)])
def test_fused_path_on_sequences_and_volumes(fused_calls, shape):
    mlp = fused_mlp(2, channels_first=True)
    x = torch.randn(*shape)
    with torch.no_grad():
        got = mlp(x)
    expected = reference_mlp(mlp, x.movedim(1, -1), torch.nn.functional.gelu).movedim(-1, 1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert len(fused_calls) == 2 * 2


def test_plain_path_whenever_the_fused_one_does_not_apply(fused_calls):
    mlp = fused_mlp(2, channels_first=False)
    x = torch.randn(2, 9, 24)
    mlp(x)  # autograd needs the plain path
    assert fused_calls == []
    with torch.no_grad():
        mlp(x)  # float32 inference: fused
    assert len(fused_calls) > 0
    fused_calls.clear()
    with torch.no_grad():
        mlp.double()(x.double())  # no float64 kernel
        with FlopCounterMode(display=False):  # FLOP counting must see the plain ops
            mlp.float()(x)
    assert fused_calls == []


def test_channel_shuffle_keeps_the_plain_path(fused_calls):
    # The fused kernels know no shuffle: a shuffling SchemeMlp must stay plain, and correct.
    mlp = SchemeMlp(24, 96, groups=4, channel_shuffle=True).eval()
    assert not AcceleratedSchemeMlp.accepts(mlp)
    assert type(accelerate(mlp)) is SchemeMlp
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x).double(), mlp.double()(x.double()),
                                   rtol=1e-5, atol=1e-6)
    assert fused_calls == []


def test_channel_shuffle_keeps_the_plain_path_in_an_accelerated_model():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", channel_shuffle=True).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        got = accelerate(model)(images)
    mlps = [m for m in model.modules() if isinstance(m, SchemeMlp)]
    assert mlps and all(type(m) is SchemeMlp and m.channel_shuffle for m in mlps)
    torch.testing.assert_close(got, expected)


def test_flop_counting_sees_every_mac_of_an_inference_call():
    mlp = SchemeMlp(64, 512, groups=4, cca=False).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        mlp(torch.randn(1, 50, 64))
    # fc1 and fc2: 2 x tokens x (64/4) x (512/4) x 4 groups.
    assert counter.get_total_flops() // 2 == 2 * 50 * 16 * 128 * 4


@pytest.mark.parametrize("groups", [1, 4])
def test_fused_path_in_chunks_of_rows(fused_calls, monkeypatch, groups):
    mlp = fused_mlp(groups, channels_first=True)
    per_layer = groups  # 24 / 4 = 6 channels per group: per-group kernels
    hidden_per_kernel = 96 // per_layer
    monkeypatch.setattr(kernels, "HIDDEN_CHUNK_BYTES", 7 * hidden_per_kernel * 4)  # 7 rows
    x = torch.randn(2, 24, 5, 3).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = mlp(x)
    expected = reference_mlp(mlp, x.permute(0, 2, 3, 1), torch.nn.functional.gelu)
    torch.testing.assert_close(got.double(), expected.permute(0, 3, 1, 2), rtol=1e-5,
                               atol=1e-5)
    assert len(fused_calls) == 2 * per_layer * 5  # 30 rows in chunks of 7
