"""The stems against plain float64 convolutions, and the conv stem inside a MetaFormer."""

import pytest
import timm
import torch
import torch.nn.functional as F

import vitmix  # noqa: F401  (registers the models)
from vitmix.complexity import count_macs
from vitmix.layers.stems import ConvStem, PatchStem, make_stem


def _randomise_norms(stem: ConvStem) -> None:
    """Non-trivial affine parameters and running statistics, so eval mode tests something."""
    with torch.no_grad():
        for norm in (stem[1], stem[4]):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
            norm.running_mean.uniform_(-0.2, 0.2)
            norm.running_var.uniform_(0.5, 2.0)


def _reference_conv_stem(stem: ConvStem, x: torch.Tensor, training: bool) -> torch.Tensor:
    """Three float64 convolutions; batch norm from the batch (training) or the running stats."""
    def norm(y, bn):
        if training:
            mean = y.mean(dim=(0, 2, 3), keepdim=True)
            var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        else:
            mean = bn.running_mean.double().view(1, -1, 1, 1)
            var = bn.running_var.double().view(1, -1, 1, 1)
        y = (y - mean) / torch.sqrt(var + bn.eps)
        return y * bn.weight.double().view(1, -1, 1, 1) + bn.bias.double().view(1, -1, 1, 1)

    def w(conv):
        return conv.weight.detach().double()

    y = F.gelu(norm(F.conv2d(x.double(), w(stem[0]), stride=1, padding=1), stem[1]))
    y = F.gelu(norm(F.conv2d(y, w(stem[3]), stride=2, padding=1), stem[4]))
    return F.conv2d(y, w(stem[6]), stem[6].bias.detach().double(), stride=2, padding=1)


@pytest.mark.parametrize("training", [True, False])
def test_conv_stem_matches_float64_reference(training):
    torch.manual_seed(0)
    stem = ConvStem(in_chans=3, dim=24)
    _randomise_norms(stem)
    stem.train(training)
    x = torch.randn(4, 3, 20, 28)
    expected = _reference_conv_stem(stem, x, training)
    with torch.no_grad():
        got = stem(x)
    assert got.shape == (4, 24, 5, 7)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_patch_stem_is_a_stride_4_convolution():
    torch.manual_seed(1)
    stem = PatchStem(in_chans=1, dim=16)
    x = torch.randn(2, 1, 32, 32)
    expected = F.conv2d(x.double(), stem.weight.detach().double(), stem.bias.detach().double(),
                        stride=4, padding=2)
    with torch.no_grad():
        torch.testing.assert_close(stem(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_unknown_stem_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"unknown stem 'cnn'; choose from \['patch', 'conv'\]"):
        make_stem("cnn", 3, 32)
    with pytest.raises(ValueError, match=r"unknown stem 'cnn'"):
        timm.create_model("metaformer_ppaa_t", stem="cnn")
    with pytest.raises(ValueError, match="the conv stem needs a width of at least 2, got 1"):
        ConvStem(3, 1)


def test_conv_stem_metaformer_keeps_the_stage_shapes():
    patch = timm.create_model("metaformer_ppaa_t", num_classes=10, in_chans=1, img_size=32)
    conv = timm.create_model("metaformer_ppaa_t", num_classes=10, in_chans=1, img_size=32,
                             stem="conv", features_only=True)
    feats = conv(torch.randn(2, 1, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 8, 8), (64, 4, 4), (128, 2, 2),
                                                   (256, 1, 1)]
    assert conv.feature_info.reduction() == [4, 8, 16, 32]
    # The stem's MACs are counted: three convs at 32x32, 16x16 and 8x8 on top of the body.
    model = timm.create_model("metaformer_ppaa_t", num_classes=10, in_chans=1, img_size=32,
                              stem="conv")
    stem_macs = 32 * 32 * 16 * 9 + 16 * 16 * 32 * 16 * 9 + 8 * 8 * 32 * 32 * 9
    patch_macs = 8 * 8 * 32 * 49
    assert count_macs(model, 32, 1) - count_macs(patch, 32, 1) == stem_macs - patch_macs


def test_conv_stem_metaformer_trains_every_parameter_and_deploys():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", num_classes=4, img_size=32,
                              in_chans=1, stem="conv").train()
    model(torch.randn(3, 1, 32, 32)).logsumexp(-1).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
        vitmix.deploy(model)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
