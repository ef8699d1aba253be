"""accelerate(): the fused float32 CPU inference path of blocks and whole models against their
plain float64 path, and what the transform keeps (state dict, switch, derived weights)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import vitmix  # noqa: F401  (registers the models)
from vitmix.accelerate import accelerate, accelerated_modules, kernels, restore, set_enabled
from vitmix.complexity import count_macs
from vitmix.models.vitmix_groupmixformer import GroupMixBlock
from vitmix.models.vitmix_metaformer import MetaFormerBlock

pytestmark = pytest.mark.skipif(not kernels.HAS_FUSED_CONV, reason="no oneDNN in this torch")


def _randomise(block: torch.nn.Module) -> torch.nn.Module:
    """Layer scales and biases far from their init, so that every term shows in the output."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5)
    return accelerate(block.eval())


def _float64_plain(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    twin = restore(copy.deepcopy(block)).double()
    with torch.no_grad():
        return twin(x.double())


@pytest.mark.parametrize("token_mixer", ["pool", "attn", "identity", "sepconv"])
@pytest.mark.parametrize("groups,cca", [(1, False), (4, True), (2, False)])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_metaformer_block_inference_matches_float64(monkeypatch, token_mixer, groups, cca,
                                                     memory_format):
    monkeypatch.setattr(kernels, "HIDDEN_CHUNK_BYTES", 9 * 64 * 4)  # several chunks
    block = _randomise(MetaFormerBlock(16, token_mixer, mlp_ratio=4, mlp_groups=groups, cca=cca,
                                       cca_schedule="learned", drop=0.0, drop_path=0.1,
                                       layer_scale_init=1e-5, head_dim=8))
    x = torch.randn(2, 16, 5, 6).contiguous(memory_format=memory_format)
    before = x.clone()
    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got.double(), _float64_plain(block, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input is never written
    assert got.is_contiguous(memory_format=memory_format)


def test_metaformer_block_takes_the_fused_path_only_in_inference(monkeypatch):
    calls = []
    original = kernels.add_rows_
    monkeypatch.setattr(kernels, "add_rows_", lambda *a, **k: calls.append(1) or original(*a, **k))
    block = accelerate(MetaFormerBlock(16, "pool", mlp_ratio=4, mlp_groups=1, cca=False,
                                       cca_schedule="learned", drop=0.0, drop_path=0.1,
                                       layer_scale_init=1e-5, head_dim=8))
    x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    block.train()(x).sum().backward()  # training: drop path is random, autograd needs it plain
    block.eval()(x).sum().backward()  # grad enabled
    with torch.no_grad():
        set_enabled(False)
        try:
            block(x)  # the switch off
        finally:
            set_enabled(None)
    assert calls == []
    with torch.no_grad():
        block(x)
    assert calls == [1]


@pytest.mark.parametrize("groups,cca", [(1, False), (4, True)])
def test_groupmix_block_inference_matches_float64(monkeypatch, groups, cca):
    monkeypatch.setattr(kernels, "HIDDEN_CHUNK_BYTES", 7 * 64 * 4)
    block = _randomise(GroupMixBlock(40, num_heads=8, mlp_ratio=4, mlp_groups=groups, cca=cca,
                                     cca_schedule="learned",
                                     qkv_bias=True, attn="factorized", impl="fast",
                                     proj_drop=0.0, drop_path=0.1))
    x = torch.randn(2, 6, 5, 40)
    before = x.clone()
    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got.double(), _float64_plain(block, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, before, rtol=0, atol=0)


# ---- whole models -----------------------------------------------------------------------------

MODELS = [("metaformer_ppaa_t", 64), ("schemeformer_ppaa_t_e8_g4", 64),
          ("schemeformer_ppaa_t_e8_g2", 64), ("groupmixformer_m", 64)]


@pytest.mark.parametrize("name,size", MODELS)
def test_accelerated_model_matches_float64_and_keeps_its_state_dict(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=size, num_classes=7).eval()
    keys = {k: v.shape for k, v in model.state_dict().items()}
    reference = copy.deepcopy(model).double()
    plain_macs = count_macs(model, size)
    accelerate(model)
    assert accelerated_modules(model), "nothing was accelerated"
    assert {k: v.shape for k, v in model.state_dict().items()} == keys
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        got = model(x)
        expected = reference(x.double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
    assert count_macs(model, size) == plain_macs  # counting sees the plain ops
    restore(model)
    assert accelerated_modules(model) == []
    assert {type(m) for m in model.modules()} == {type(m) for m in reference.modules()}


def test_derived_weights_follow_the_parameters():
    model = accelerate(timm.create_model("schemeformer_ppaa_t_e8_g4", img_size=64).eval())
    other = timm.create_model("schemeformer_ppaa_t_e8_g4", img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)  # derived weights made for the first parameters
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x), other(x), rtol=1e-5, atol=1e-5)
        for p in model.parameters():
            p.mul_(0.5)  # in place, as an optimizer step
        for p in other.parameters():
            p.mul_(0.5)
        torch.testing.assert_close(model(x), other(x), rtol=1e-5, atol=1e-5)


def test_accelerate_rejects_what_is_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module, got str"):
        accelerate("schemeformer_ppaa_t_e8_g4")


def test_switch_values(monkeypatch):
    from vitmix.accelerate import is_enabled

    monkeypatch.setenv("VITMIX_ACCELERATE", "0")
    assert not is_enabled()
    monkeypatch.setenv("VITMIX_ACCELERATE", "yes")
    with pytest.raises(ValueError, match="VITMIX_ACCELERATE='yes'.*expected 1 \\(on\\) or 0"):
        is_enabled()
    set_enabled(True)
    try:
        assert is_enabled()  # the function overrides the environment
    finally:
        set_enabled(None)
    with pytest.raises(TypeError, match="True, False or None"):
        set_enabled(1)
