"""The authors' GroupMixFormer checkpoints: key conversion, strict loading, same function, CLI."""

import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

import vitmix  # noqa: F401  (registers the models)
from vitmix.checkpoints import describe_groupmixformer, from_official
from vitmix.cli import main as cli_main

# The key names and shapes of the authors' released checkpoints, one "key (shape)" a line.
RELEASE_KEYS_DIR = Path(__file__).parent / "fixtures" / "release_keys"


def listing(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    path = RELEASE_KEYS_DIR / f"groupmixformer_{arch}_official_state_dict.txt"
    entries = []
    for line in path.read_text().splitlines():
        key, shape = line.split(" ", 1)
        entries.append((key, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return entries


def official_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the release's keys and shapes (BatchNorm variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in listing(arch):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.2
    return state


# ------------------------------------------- the release's forward pass, on its own key names

def hardswish(x):
    return x * (x + 3).clamp(0, 6) / 6


def bn(x, sd, prefix):
    shape = (1, -1, 1, 1)
    return ((x - sd[prefix + "running_mean"].view(shape))
            / torch.sqrt(sd[prefix + "running_var"].view(shape) + 1e-5)
            * sd[prefix + "weight"].view(shape) + sd[prefix + "bias"].view(shape))


def ln(x, sd, prefix, eps):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[prefix + "weight"] + sd[prefix + "bias"]


def sepconv(x, sd, prefix, stride=1):
    dw = sd[prefix + "conv1.weight"]
    x = F.conv2d(x, dw, stride=stride, padding=dw.shape[-1] // 2, groups=dw.shape[0])
    return F.conv2d(x, sd[prefix + "pointwise_conv.weight"])


def release_attention(x, sd, p, size, heads=8):
    """The released EfficientAtt: x (B, N, C) tokens."""
    b, n, c = x.shape
    h, w = size
    seg = c // 5
    qkv = x @ sd[p + "qkv.weight"].t() + sd[p + "qkv.bias"]
    q, k, v = (t.transpose(1, 2).reshape(b, c, h, w) for t in qkv.split(c, dim=-1))
    agg = p + "aggregator."

    def proxies(t):  # BatchNorm in eval mode acts per sample, so q, k, v can go one by one
        parts = [hardswish(bn(t[:, :seg], sd, agg + "norm0."))]
        for i in (1, 2, 3):
            s = sepconv(t[:, i * seg:(i + 1) * seg], sd, agg + f"agg{i}.")
            parts.append(hardswish(bn(s, sd, agg + f"norm{i}.")))
        return torch.cat(parts, 1).reshape(b, heads, 4 * seg // heads, n).transpose(-1, -2)

    local = torch.cat([q[:, 4 * seg:], k[:, 4 * seg:], v[:, 4 * seg:]], dim=1)
    local = sepconv(local, sd, agg + "agg0.conv.").flatten(2).transpose(1, 2)
    local = hardswish(ln(local, sd, agg + "agg0.norm.", 1e-5))

    qh, kh, vh = proxies(q), proxies(k), proxies(v)  # (B, heads, N, d)
    d = qh.shape[-1]
    context = torch.einsum("bhnk,bhnv->bhkv", kh.softmax(dim=2), vh)
    att = (c // heads) ** -0.5 * torch.einsum("bhnk,bhkv->bhnv", qh, context)
    v_map = vh.transpose(-1, -2).reshape(b, heads * d, h, w)
    convs, start = [], 0
    for i, split in enumerate((2, 3, 3)):  # heads per kernel 3, 5, 7
        weight = sd[p + f"crpe.conv_list.{i}.weight"]
        bias = sd[p + f"crpe.conv_list.{i}.bias"]
        part = v_map[:, start:start + split * d]
        convs.append(F.conv2d(part, weight, bias, padding=weight.shape[-1] // 2,
                              groups=split * d))
        start += split * d
    pos = torch.cat(convs, 1).reshape(b, heads, d, n).transpose(-1, -2)
    att = (att + qh * pos).transpose(1, 2).reshape(b, n, 4 * seg)
    return torch.cat([att, local], -1) @ sd[p + "proj.weight"].t() + sd[p + "proj.bias"]


def release_forward(sd, x, depths):
    x = hardswish(bn(F.conv2d(x, sd["conv_stem.proj1.weight"], sd["conv_stem.proj1.bias"],
                              stride=2, padding=1), sd, "conv_stem.norm1."))
    x = hardswish(bn(F.conv2d(x, sd["conv_stem.proj2.weight"], sd["conv_stem.proj2.bias"],
                              stride=2, padding=1), sd, "conv_stem.norm2."))
    for s, depth in enumerate(depths):
        pe = f"patch_embed_layers.{s}."
        x = hardswish(bn(sepconv(x, sd, pe + "proj.", stride=1 if s == 0 else 2), sd,
                         pe + "norm."))
        b, c, h, w = x.shape
        for j in range(depth):
            p = f"groupmixformer_backbone.{s}.gma_stage.{j}."
            x = x + F.conv2d(x, sd[p + "cpe.proj.weight"], sd[p + "cpe.proj.bias"], padding=1,
                             groups=c)
            t = x.flatten(2).transpose(1, 2)
            t = t + release_attention(ln(t, sd, p + "norm1.", 1e-6), sd, p + "att.", (h, w))
            hidden = F.gelu(ln(t, sd, p + "norm2.", 1e-6) @ sd[p + "mlp.fc1.weight"].t()
                            + sd[p + "mlp.fc1.bias"])
            t = t + hidden @ sd[p + "mlp.fc2.weight"].t() + sd[p + "mlp.fc2.bias"]
            x = t.transpose(1, 2).reshape(b, c, h, w)
    x = bn(x, sd, "norm4.").mean(dim=(2, 3))
    return x @ sd["head.weight"].t() + sd["head.bias"]


# -------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("arch", ["m", "t"])
def test_release_keys_load_strictly(arch):
    official = official_state_dict(arch)
    converted = from_official({"model": official})
    assert len(converted) == len(official)
    with torch.device("meta"):
        model = timm.create_model(f"groupmixformer_{arch}")
    assert set(converted) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert converted[key].shape == value.shape, key
    model = timm.create_model(f"groupmixformer_{arch}")
    model.load_state_dict(converted, strict=True)
    assert describe_groupmixformer(converted)["model"] == f"groupmixformer_{arch}"


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_converted_model_computes_the_release_function(impl):
    official = official_state_dict("m", seed=1)
    model = timm.create_model("groupmixformer_m", impl=impl)
    model.load_state_dict(from_official(official), strict=True)
    model = model.double().eval()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    expected = release_forward({k: v.double() for k, v in official.items()}, x, (3, 3, 12, 4))
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-8 * expected.abs().max().item())


def test_float32_matches_release_to_rounding():
    official = official_state_dict("m", seed=2)
    model = timm.create_model("groupmixformer_m")
    model.load_state_dict(from_official(official), strict=True)
    x = torch.randn(1, 3, 64, 64)
    expected = release_forward({k: v.double() for k, v in official.items()}, x.double(),
                               (3, 3, 12, 4))
    with torch.no_grad():
        out = model.eval()(x).double()
    scale = expected.abs().max().item()
    assert (out - expected).abs().max().item() < 1e-4 * max(scale, 1.0)
    assert math.isfinite(scale)


def test_unwrapping_and_prefixes():
    official = official_state_dict("m")
    bare = from_official(official)
    for wrapped in ({"model": official}, {"state_dict": official},
                    {f"module.{k}": v for k, v in official.items()}):
        converted = from_official(wrapped)
        assert converted.keys() == bare.keys()
        assert all(converted[k] is bare[k] for k in bare)


def test_bad_state_dicts_raise():
    official = official_state_dict("m")
    with pytest.raises(ValueError, match="arch 'vit'"):
        from_official(official, arch="vit")
    with pytest.raises(ValueError, match="cls_token"):
        from_official(dict(official, cls_token=torch.zeros(1)))
    converted = from_official(official)
    with pytest.raises(ValueError, match="converted already"):
        from_official(converted)
    with pytest.raises(ValueError, match="not a tensor"):
        from_official({"head.weight": [1, 2]})
    with pytest.raises(ValueError, match="no tensors"):
        from_official({})


def test_cli_import_weights_then_load_through_timm(tmp_path, capsys):
    official = official_state_dict("m", seed=3)
    src, out = tmp_path / "gmf_m.pth", tmp_path / "gmf_m.safetensors"
    torch.save({"model": official}, src)
    assert cli_main(["import-weights", str(src), str(out), "--arch", "groupmixformer"]) == 0
    printed = capsys.readouterr()
    assert "groupmixformer_m" in printed.out and "converted entry 'model'" in printed.out
    # A release carries no checksum of vitmix's: it converts, and says it was not verified.
    assert printed.err == (f"note: checkpoint {src} holds no checksum of its tensors (written by "
                           f"an earlier vitmix or by another tool); its weights load unverified\n")
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta.pop("tensors_sha256")  # verified where vitmix reads it: test_hostile_files.py
    # The file names the registered model its sizes match, as SCHEME imports do.
    assert meta == {"format": "pt", "source": "vitmix import-weights",
                    "model": "groupmixformer_m", "model_kwargs": '{"num_classes": 1000}',
                    "deployed": "0", "official_arch": "groupmixformer",
                    "converted_entry": "model"}
    as_pth = tmp_path / "gmf_m.pth.out.pth"
    assert cli_main(["import-weights", str(src), str(as_pth)]) == 0
    assert torch.load(as_pth, weights_only=True).keys() == from_official(official).keys()

    expected = timm.create_model("groupmixformer_m")
    expected.load_state_dict(from_official(official), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = expected.eval()(x)
        by_path = timm.create_model("groupmixformer_m", checkpoint_path=str(out)).eval()
        torch.testing.assert_close(by_path(x), want)
        by_cfg = timm.create_model("groupmixformer_m", pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(out))).eval()
        torch.testing.assert_close(by_cfg(x), want)

    # Existing output is kept unless --force; bad paths give one clean line and exit code 2.
    assert cli_main(["import-weights", str(src), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["import-weights", str(src), str(out), "--force"]) == 0
    missing = tmp_path / "missing.pth"
    assert cli_main(["import-weights", str(missing), str(tmp_path / "x.safetensors")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert cli_main(["import-weights", str(src), str(tmp_path / "x.bin")]) == 2
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["import-weights", str(bad), str(tmp_path / "y.safetensors")]) == 2
    assert "bad.pth" in capsys.readouterr().err
    assert not (tmp_path / "y.safetensors").exists()
