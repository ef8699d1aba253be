"""The fused float32 CPU inference path of the model blocks against their plain float64 path."""

from __future__ import annotations

import copy

import pytest
import torch

from vitmix.layers import onednn
from vitmix.models.groupmixformer import GroupMixBlock
from vitmix.models.metaformer import MetaFormerBlock

pytestmark = pytest.mark.skipif(not onednn.HAS_FUSED_CONV, reason="no oneDNN in this torch")


def _randomise(block: torch.nn.Module) -> torch.nn.Module:
    """Layer scales and biases far from their init, so that every term shows in the output."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5)
    return block.eval()


def _float64_plain(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    twin = copy.deepcopy(block).double()  # float64 never takes the fused path
    with torch.no_grad():
        return twin(x.double())


@pytest.mark.parametrize("token_mixer", ["pool", "attn", "identity", "sepconv"])
@pytest.mark.parametrize("groups,cca", [(1, False), (4, True), (2, False)])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_metaformer_block_inference_matches_float64(monkeypatch, token_mixer, groups, cca,
                                                     memory_format):
    monkeypatch.setattr(onednn, "HIDDEN_CHUNK_BYTES", 9 * 64 * 4)  # several chunks
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
    original = MetaFormerBlock._forward_inference
    monkeypatch.setattr(MetaFormerBlock, "_forward_inference",
                        lambda self, x: calls.append(1) or original(self, x))
    block = MetaFormerBlock(16, "pool", mlp_ratio=4, mlp_groups=1, cca=False,
                            cca_schedule="learned", drop=0.0, drop_path=0.1,
                            layer_scale_init=1e-5, head_dim=8)
    x = torch.randn(2, 16, 4, 4)
    block.train()(x).sum().backward()  # training: drop path is random, autograd needs it plain
    block.eval()(x).sum().backward()  # grad enabled
    assert calls == []
    with torch.no_grad():
        block(x)
    assert calls == [1]


@pytest.mark.parametrize("groups,cca", [(1, False), (4, True)])
def test_groupmix_block_inference_matches_float64(monkeypatch, groups, cca):
    monkeypatch.setattr(onednn, "HIDDEN_CHUNK_BYTES", 7 * 64 * 4)
    block = _randomise(GroupMixBlock(40, num_heads=8, mlp_ratio=4, mlp_groups=groups, cca=cca,
                                     qkv_bias=True, attn="factorized", impl="fast",
                                     proj_drop=0.0, drop_path=0.1))
    x = torch.randn(2, 6, 5, 40)
    before = x.clone()
    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got.double(), _float64_plain(block, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
