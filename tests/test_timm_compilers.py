"""timm's conventions that need more than eager mode, for every registered model: TorchScript,
torch.fx (forward, backward, timm's fx feature extractor), a complete pretrained_cfg that timm's
loader can use to adapt 3-channel weights to other input channels, and model modules of their
own name.

The compilers run on each registered model with one block per stage (its widths, stem, token
and channel mixers) on 32x32 images (every model takes any multiple of 32; the position
embedding is resized); the pretrained_cfg checks build every model at its registered size on the
meta device.
"""

import pytest
import timm
import torch
from timm.models import FeatureGraphNet
from timm.models._manipulate import adapt_input_conv
from torch import nn

import vitmix
from vitmix.models.vitmix_groupmixformer import GroupMixFormer
from vitmix.models.vitmix_metaformer import MetaFormer

METAFORMERS = timm.list_models(module="vitmix_metaformer")
GROUPMIXFORMERS = timm.list_models(module="vitmix_groupmixformer")
ALL_MODELS = sorted(METAFORMERS + GROUPMIXFORMERS)
# One model per stem and family, for the checks that load weights.
ONE_PER_STEM = ["schemeformer_ppaa_t_e8_g4", "schemeformer_ppaa_t_e8_g4_convstem",
                "groupmixformer_m_scheme_e8_g4"]


def _build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=7, **kwargs)


def _images(batch: int = 2, chans: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(1))


def _assert_close_to_scale(got: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Equal up to float32 rounding on the tensor's own scale (a bias before a BatchNorm has a
    gradient of zero but for rounding)."""
    err = (got - expected).abs().max().item()
    assert err <= 1e-4 * expected.abs().max().item() + 1e-6, f"{name}: off by {err:g}"


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_model_modules_have_names_of_their_own():
    assert len(ALL_MODELS) == 34
    assert len(METAFORMERS) == 27 and len(GROUPMIXFORMERS) == 7
    # timm files a model under its module's last name: timm's own metaformer.py keeps its own.
    ours = set(ALL_MODELS)
    assert not ours & set(timm.list_models(module="metaformer"))
    assert {"poolformer_s12", "caformer_s18"} <= set(timm.list_models(module="metaformer"))
    assert all(isinstance(timm.create_model(n, device="meta"), MetaFormer) for n in METAFORMERS)
    assert all(isinstance(timm.create_model(n, device="meta"), GroupMixFormer)
               for n in GROUPMIXFORMERS)


def _shallow(name: str, **kwargs) -> nn.Module:
    """The registered model with one block per stage: every layer kind, width, stem and SCHEME
    setting of the name, at a fraction of the cost."""
    return _build(name, depths=(1, 1, 1, 1), **kwargs)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_torchscript_and_fx_give_the_eager_output(name):
    model = _shallow(name)
    if isinstance(model, GroupMixFormer):
        # The compilers record the reference attention (tests/test_group_mix.py holds the fast
        # path equal to it); eager mode runs the same here, so the sums match term for term.
        model.set_attention(impl="reference")
    x = _images()

    # torch.fx, in training mode (CCA active): forward and backward.
    traced = torch.fx.symbolic_trace(model.train())
    model(x).square().sum().backward()
    expected_grads = _grads(model)
    model.zero_grad()
    got = traced(x)
    torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    got.square().sum().backward()
    grads = _grads(model)
    assert grads.keys() == expected_grads.keys()
    for key, grad in grads.items():
        _assert_close_to_scale(grad, expected_grads[key], key)

    model.eval()
    with torch.no_grad():
        expected = model(x)
        # timm's fx feature extractor (what features_only=True, feature_cls="fx" builds).
        features = FeatureGraphNet(model, out_indices=(0, 1, 2, 3))(x)
        assert [t.shape[1] for t in features] == [i["num_chs"] for i in model.feature_info]
        torch.testing.assert_close(features[-1], model.forward_features(x), rtol=1e-4,
                                   atol=1e-5)
        # TorchScript, without the profiling executor's warm-up runs (the same graph).
        with torch.jit.optimized_execution(False):
            scripted = torch.jit.script(model)(x)
    assert scripted.shape == (2, 7)
    # GroupMixFormer's TorchScript runs the reference attention (the fast path's Python is
    # beyond TorchScript): the same function, another order of sums.
    torch.testing.assert_close(scripted, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ONE_PER_STEM)
def test_features_only_with_the_fx_feature_class(name):
    torch.manual_seed(0)
    fx_model = timm.create_model(name, features_only=True, feature_cls="fx", depths=(1, 1, 1, 1))
    torch.manual_seed(0)
    eager = timm.create_model(name, features_only=True, depths=(1, 1, 1, 1))
    x = _images()
    with torch.no_grad():
        got, expected = fx_model.eval()(x), eager.eval()(x)
    assert [t.shape[1] for t in got] == fx_model.feature_info.channels()
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    # Backward through the traced feature graph reaches the stem.
    sum(t.sum() for t in fx_model.train()(x)).backward()
    first_conv = fx_model.graph_module.get_submodule(
        timm.create_model(name, device="meta").pretrained_cfg["first_conv"])
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_torchvision_feature_extractor_traces_both_families():
    from torchvision.models.feature_extraction import create_feature_extractor

    for name in ("schemeformer_ppaa_t_e8_g4", "groupmixformer_m"):
        model = _shallow(name).eval()
        extractor = create_feature_extractor(model, return_nodes={"stages.3": "last"})
        with torch.no_grad():
            got = extractor(_images())["last"]
            torch.testing.assert_close(got, model.forward_features(_images()))


@pytest.mark.parametrize("name", ONE_PER_STEM)
def test_scripted_and_traced_models_refuse_a_bad_input_in_one_line(name):
    model = _shallow(name).eval()
    bad = _images(chans=1)
    message = r"expected images of shape \(B, 3, H, W\), got shape \(2, 1, 32, 32\)"
    with pytest.raises(ValueError, match=message):
        model(bad)
    with pytest.raises(ValueError, match=message):
        torch.fx.symbolic_trace(model)(bad)
    with pytest.raises(torch.jit.Error, match=message):
        torch.jit.script(model)(bad)
    with pytest.raises(ValueError, match="input size 48x64 is not supported"):
        torch.fx.symbolic_trace(model)(torch.zeros(1, 3, 48, 64))


def test_deployed_and_cosine_schedule_models_script():
    model = _shallow("schemeformer_ppaa_t_e8_g4", cca_schedule="cosine").eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))
        vitmix.deploy(model, accelerate=False)
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_a_traced_model_keeps_the_channels_last_speed_path_out_of_its_graph():
    # The SchemeMlp's layout choice reads memory strides, which fx cannot record: the graph
    # holds the layout-free path, and gives the same output on a channels-last input.
    model = _shallow("schemeformer_ppaa_t_e8_g4").eval()
    traced = torch.fx.symbolic_trace(model)
    x = _images().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_pretrained_cfg_is_complete_and_names_real_layers(name):
    model = timm.create_model(name, device="meta")
    cfg = model.pretrained_cfg
    _, height, width = cfg["input_size"]
    assert cfg["input_size"][0] == 3 and height == width
    assert model.feature_info[-1]["reduction"] == 32
    assert cfg["pool_size"] == (height // 32, width // 32)
    assert 0 < cfg["crop_pct"] <= 1 and cfg["interpolation"] == "bicubic"
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    assert cfg["num_classes"] == model.num_classes == 1000
    first_conv = model.get_submodule(cfg["first_conv"])
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == 3
    # No convolution sees the image before first_conv.
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)) is first_conv
    classifier = model.get_submodule(cfg["classifier"])
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 1000


@pytest.mark.parametrize("name", ONE_PER_STEM)
@pytest.mark.parametrize("in_chans", [1, 4])
def test_timm_adapts_three_channel_weights_to_other_input_channels(name, in_chans, tmp_path):
    source = _build(name)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    first_conv = source.pretrained_cfg["first_conv"]
    model = timm.create_model(name, pretrained=True, in_chans=in_chans, num_classes=7,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=7))
    weight = model.get_submodule(first_conv).weight
    assert weight.shape[1] == in_chans
    expected = adapt_input_conv(in_chans, source.get_submodule(first_conv).weight.detach())
    torch.testing.assert_close(weight.detach(), expected)
    # Every other tensor is the source's.
    others = {k: v for k, v in source.state_dict().items() if not k.startswith(first_conv + ".")}
    loaded = model.state_dict()
    for key, value in others.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert model.eval()(_images(chans=in_chans)).shape == (2, 7)
