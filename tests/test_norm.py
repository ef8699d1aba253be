"""layers.norm.GroupNorm1: PyTorch 2.11-2.13's CPU GroupNorm backward crash (a channels-last
input that needs no gradient, a weight that does), which versions have it, and that vitmix's
norm neither crashes nor changes a value on any of them."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import timm
import timm.layers
import torch

import vitmix  # noqa: F401  (registers the models)
from vitmix.layers.norm import (
    GROUP_NORM_CHANNELS_LAST_BACKWARD_CRASHES,
    GroupNorm1,
    crashing_backward_case,
)
from vitmix.models.vitmix_metaformer import MetaFormerBlock

# The bare case, in a process of its own since on the affected versions it dies of SIGSEGV.
BARE_CASE = """
import torch
norm = torch.nn.GroupNorm(1, 16)
x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
norm(x).sum().backward()
print("survived", norm.weight.grad.shape)
"""


def _maps() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "channels_last": torch.randn(2, 16, 4, 5, generator=g).contiguous(
            memory_format=torch.channels_last),
        "channels_last_3d": torch.randn(2, 16, 3, 4, 5, generator=g).contiguous(
            memory_format=torch.channels_last_3d),
        # Not dense, so not channels-last contiguous, yet channels-last in PyTorch's eyes.
        "channels_last_slice": torch.randn(2, 16, 6, 5, generator=g).contiguous(
            memory_format=torch.channels_last)[:, :, 1:5],
        "contiguous": torch.randn(2, 16, 4, 5, generator=g),
    }


def test_the_bare_case_crashes_exactly_where_the_flag_says():
    """The fact the workaround rests on: plain PyTorch dies of SIGSEGV here on 2.11-2.13
    (2.11.0, 2.12.1 and 2.13.0 were tried) and not on 2.14.0 and later."""
    run = subprocess.run([sys.executable, "-c", BARE_CASE], capture_output=True, text=True,
                         timeout=300)
    if GROUP_NORM_CHANNELS_LAST_BACKWARD_CRASHES:
        assert run.returncode == -signal.SIGSEGV, (run.returncode, run.stderr[-2000:])
    else:
        assert run.returncode == 0, run.stderr[-2000:]
        assert "survived" in run.stdout


@pytest.mark.parametrize("layout", ["channels_last", "channels_last_3d", "channels_last_slice",
                                    "contiguous"])
def test_vitmix_norm_trains_behind_frozen_layers_as_the_plain_norm(layout):
    x = _maps()[layout]
    norm = GroupNorm1(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    plain = timm.layers.GroupNorm1(16)
    plain.load_state_dict(norm.state_dict())
    assert crashing_backward_case(x, norm.weight, norm.bias) == (layout != "contiguous")

    y = norm(x)  # on 2.11-2.13 the bare op's backward would kill the process here
    y.pow(2).sum().backward()
    # The reference on a contiguous copy, whose backward is safe on every version.
    expected = plain(x.contiguous())
    expected.pow(2).sum().backward()
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(norm.weight.grad, plain.weight.grad)
    torch.testing.assert_close(norm.bias.grad, plain.bias.grad)
    assert not x.requires_grad and x.grad is None
    if layout in ("channels_last", "channels_last_3d"):  # the layout the plain norm gives
        assert y.is_contiguous(memory_format=getattr(torch, layout))


def test_the_case_is_only_the_crashing_one():
    x = _maps()["channels_last"]
    norm = GroupNorm1(16)
    assert crashing_backward_case(x, norm.weight, norm.bias)
    assert crashing_backward_case(x, None, norm.bias)
    assert not crashing_backward_case(x.requires_grad_(), norm.weight, norm.bias)  # dX wanted
    x = x.detach()
    with torch.no_grad():
        assert not crashing_backward_case(x, norm.weight, norm.bias)  # no backward
    norm.requires_grad_(False)
    assert not crashing_backward_case(x, norm.weight, norm.bias)  # nothing to differentiate
    assert not crashing_backward_case(x, None, None)
    assert not crashing_backward_case(torch.randn(2, 16, 20).transpose(1, 2),
                                      GroupNorm1(20).weight, None)  # tokens: no such kernel


def test_metaformer_uses_it_and_keeps_the_state_dict_keys():
    block = MetaFormerBlock(16, "pool", mlp_ratio=4, mlp_groups=1, cca=False,
                            cca_schedule="learned", drop=0.0, drop_path=0.0,
                            layer_scale_init=1e-5, head_dim=8)
    assert type(block.norm1) is GroupNorm1 and type(block.norm2) is GroupNorm1
    model = timm.create_model("metaformer_ppaa_t", num_classes=10)
    assert type(model.norm) is GroupNorm1
    assert {"norm.weight", "norm.bias", "stages.0.blocks.0.norm1.weight"} <= set(
        model.state_dict())


def test_a_model_trains_channels_last_on_the_cpu_with_a_frozen_stem():
    """The way a user meets the crash: fine-tuning with the stem frozen, channels-last (the
    trainer's default layout), so the first block's norm gets an input without gradient."""
    torch.manual_seed(0)
    model = timm.create_model("metaformer_ppaa_t", num_classes=10).to(
        memory_format=torch.channels_last).train()
    stem = model.stages[0].downsample
    stem.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model(x).logsumexp(dim=1).sum().backward()
    first = model.stages[0].blocks[0]
    assert first.norm1.weight.grad is not None and first.norm1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in stem.parameters())
