"""Group-Mix Attention against a float64 reference written out, both modes, both impls."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vitmix.layers.group_mix import GroupMixAttention

IMPLS = ("fast", "reference")
MODES = ("factorized", "softmax")


# ---------------------------------------------------------------- the slow, obvious reference

def hardswish(x):
    return x * (x + 3).clamp(0, 6) / 6


def depthwise_conv(x, weight, bias=None):
    """'Same' depthwise conv of (B, C, H, W) as a sum of shifted copies, one tap at a time."""
    k = weight.shape[-1]
    p = k // 2
    h, w = x.shape[-2:]
    padded = F.pad(x, (p, p, p, p))
    out = torch.zeros_like(x)
    for i in range(k):
        for j in range(k):
            out += padded[:, :, i:i + h, j:j + w] * weight[:, 0, i, j].view(1, -1, 1, 1)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def pointwise(x, weight):
    return torch.einsum("oc,bchw->bohw", weight[:, :, 0, 0], x)


def batchnorm(x, norm, training):
    """x: (R, C, H, W); statistics over everything but C when training."""
    if training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = norm.running_mean.double(), norm.running_var.double()
    scale = norm.weight.double() / torch.sqrt(var + norm.eps)
    return (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + norm.bias.double().view(
        1, -1, 1, 1)


def softmax(x, dim):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def gma_reference(m: GroupMixAttention, x: torch.Tensor, training: bool = False) -> torch.Tensor:
    """GroupMixAttention in float64, written from the description, head by head."""
    p = {k: v.double() for k, v in m.state_dict().items()}
    x = x.double()
    b, h, w, c = x.shape
    seg, heads = c // 5, m.num_heads
    qkv = x @ p["qkv.weight"].t() + (p["qkv.bias"] if "qkv.bias" in p else 0)
    maps = [t.permute(0, 3, 1, 2) for t in qkv.split(c, dim=-1)]  # q, k, v as (B, C, H, W)

    # Aggregators: shared by q, k, v; their BatchNorm sees all three together.
    stacked = torch.cat(maps, dim=0)  # (3B, C, H, W)
    proxies = []
    for i, agg in enumerate(m.aggregators):
        s = stacked[:, i * seg:(i + 1) * seg]
        if agg.conv is not None:
            s = depthwise_conv(s, p[f"aggregators.{i}.conv.conv_dw.weight"])
            s = pointwise(s, p[f"aggregators.{i}.conv.conv_pw.weight"])
        proxies.append(hardswish(batchnorm(s, agg.norm, training)))
    mixed = torch.cat(proxies, dim=1)  # (3B, 4 seg, H, W)
    q, k, v = (t.flatten(2).transpose(1, 2) for t in mixed.split(b, dim=0))  # (B, N, 4 seg)

    # Relative position term: per head, a depthwise conv of v with that head's kernel.
    d = 4 * seg // heads
    head_convs = []  # (weight, bias) of each head's channels
    for i, conv in enumerate(m.rel_pos.convs):
        weight, bias = p[f"rel_pos.convs.{i}.weight"], p[f"rel_pos.convs.{i}.bias"]
        head_convs += [(weight[j:j + d], bias[j:j + d]) for j in range(0, conv.in_channels, d)]
    v_map = v.transpose(1, 2).reshape(b, 4 * seg, h, w)

    out_heads = []
    for j in range(heads):
        cols = slice(j * d, (j + 1) * d)
        qh, kh, vh = q[..., cols], k[..., cols], v[..., cols]
        if m.attn == "factorized":
            k_soft = softmax(kh, dim=1)  # over the tokens
            context = torch.einsum("bnc,bnd->bcd", k_soft, vh)
            att = (c // heads) ** -0.5 * torch.einsum("bnc,bcd->bnd", qh, context)
        else:
            scores = torch.einsum("bnc,bmc->bnm", qh, kh) / math.sqrt(d)
            att = torch.einsum("bnm,bmd->bnd", softmax(scores, dim=-1), vh)
        weight, bias = head_convs[j]
        pos = depthwise_conv(v_map[:, cols], weight, bias).flatten(2).transpose(1, 2)
        out_heads.append(att + qh * pos)
    attended = torch.cat(out_heads, dim=-1)  # (B, N, 4 seg)

    # The fifth segments of q, k and v: concatenated, separable conv, LayerNorm, Hardswish.
    local = torch.cat([t[:, 4 * seg:] for t in maps], dim=1)
    local = depthwise_conv(local, p["skip_branch.conv.conv_dw.weight"])
    local = pointwise(local, p["skip_branch.conv.conv_pw.weight"]).flatten(2).transpose(1, 2)
    mean = local.mean(-1, keepdim=True)
    var = local.var(-1, unbiased=False, keepdim=True)
    local = (local - mean) / torch.sqrt(var + m.skip_branch.norm.eps)
    local = hardswish(local * p["skip_branch.norm.weight"] + p["skip_branch.norm.bias"])

    out = torch.cat([attended, local], dim=-1) @ p["proj.weight"].t() + p["proj.bias"]
    return out.reshape(b, h, w, c)


# ------------------------------------------------------------------------------------ helpers

def make_gma(dim=40, seed=0, **kwargs) -> GroupMixAttention:
    torch.manual_seed(seed)
    m = GroupMixAttention(dim, **kwargs)
    with torch.no_grad():
        for p in m.parameters():  # not the default init: every parameter matters
            p.normal_(0, 0.3)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


# -------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("attn", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_reference_eval(attn, impl):
    m = make_gma(40, attn=attn, impl=impl).double().eval()
    x = torch.randn(2, 6, 10, 40, dtype=torch.float64)
    with torch.no_grad():
        out = m(x)
    expected = gma_reference(m, x)
    assert out.shape == (2, 6, 10, 40)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("attn", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_reference_training(attn, impl):
    # Training mode: BatchNorm statistics over q, k and v of the whole batch.
    m = make_gma(40, seed=1, attn=attn, impl=impl).double().train()
    x = torch.randn(3, 5, 7, 40, dtype=torch.float64)
    out = m(x)
    torch.testing.assert_close(out, gma_reference(m, x, training=True), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("attn", MODES)
def test_float32_matches_reference_within_rounding(attn):
    m = make_gma(80, seed=2, attn=attn).eval()
    x = torch.randn(2, 8, 8, 80)
    with torch.no_grad():
        out = m(x)
    expected = gma_reference(m, x)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("attn", MODES)
def test_fast_and_reference_agree_with_gradients(attn, training):
    ref = make_gma(40, seed=3, attn=attn, impl="reference").train(training)
    fast = copy.deepcopy(ref)
    fast.impl = "fast"
    x = torch.randn(2, 8, 6, 40)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_fast = ref(x_ref), fast(x_fast)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_fast.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)
    # Both impls update the BatchNorm running statistics the same way.
    for (name, b_ref), b_fast in zip(ref.named_buffers(), fast.buffers(), strict=True):
        torch.testing.assert_close(b_fast, b_ref, msg=name)


def test_heads_that_straddle_segments():
    # 6 heads over 4 segments: the fast impl hands over to the reference.
    m = make_gma(60, seed=4, num_heads=6, rel_pos_heads=(2, 2, 2)).double().eval()
    x = torch.randn(1, 4, 5, 60, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), gma_reference(m, x), rtol=1e-9, atol=1e-9)


def test_no_qkv_bias():
    m = make_gma(40, seed=5, qkv_bias=False).double().eval()
    assert m.qkv.bias is None
    x = torch.randn(1, 4, 4, 40, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), gma_reference(m, x), rtol=1e-9, atol=1e-9)


def test_same_parameters_in_every_mode_and_impl():
    keys = {(a, i): set(GroupMixAttention(40, attn=a, impl=i).state_dict())
            for a in MODES for i in IMPLS}
    assert len({frozenset(k) for k in keys.values()}) == 1
    m = GroupMixAttention(80)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["qkv.weight"] == (240, 80)
    assert shapes["aggregators.3.conv.conv_dw.weight"] == (16, 1, 7, 7)
    assert shapes["skip_branch.conv.conv_dw.weight"] == (48, 1, 3, 3)
    assert shapes["skip_branch.conv.conv_pw.weight"] == (16, 48, 1, 1)
    assert [shapes[f"rel_pos.convs.{i}.weight"] for i in range(3)] == [
        (16, 1, 3, 3), (24, 1, 5, 5), (24, 1, 7, 7)]
    assert "aggregators.0.conv" not in " ".join(shapes)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(dim=42), "42"),
    (dict(dim=45), "num_heads 8"),
    (dict(dim=40, num_heads=3), "num_heads 3"),
    (dict(dim=40, rel_pos_heads=(2, 2, 2)), "rel_pos_heads"),
    (dict(dim=40, attn="linear"), "'linear'"),
    (dict(dim=40, impl="cuda"), "'cuda'"),
])
def test_bad_construction_raises(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        GroupMixAttention(**kwargs)


def test_bad_input_raises():
    m = GroupMixAttention(40)
    with pytest.raises(ValueError, match=r"\(B, H, W, 40\)"):
        m(torch.randn(1, 40, 4, 4))
    with pytest.raises(ValueError, match="40"):
        m(torch.randn(1, 16, 40))
