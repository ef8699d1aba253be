"""The authors' SCHEME checkpoints (scheme_vit): conversion, strict loading, the release's eval
function against a float64 re-creation written on the release's key names, errors, CLI."""

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

import vitmix
from vitmix.checkpoints import convert_schemeformer, from_official, read_model, save_weights
from vitmix.cli import main as cli_main
from vitmix.layers import SchemeMlp

# The key names and shapes of the release's checkpoints, one "key (shape)" a line.
RELEASE_KEYS_DIR = Path(__file__).parent / "fixtures" / "release_keys"
SHUFFLE_S12 = "shufflegrouporgattnmlpformer_ppaa_s12_224"
DENSE_S12 = "schemeformer_ppaa_s12_224"  # a dense E=8 MLP, despite the name


def listing(name: str) -> dict[str, tuple[int, ...]]:
    text = (RELEASE_KEYS_DIR / f"{name}_official_state_dict.txt").read_text()
    entries = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        entries[key] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return entries


def release_layout(dims, depths, ratios, groups, cca, num_classes=1000, pos_size=(14, 14),
                   mixers=("pool", "pool", "attn", "attn"), in_chans=3) -> dict:
    """Keys and shapes as the release's MetaFormer names them: network = [blocks, downsample,
    blocks, downsample, position embedding, blocks, downsample, blocks]."""
    shapes = {"patch_embed.proj.weight": (dims[0], in_chans, 7, 7),
              "patch_embed.proj.bias": (dims[0],)}
    index = 0
    for s, dim in enumerate(dims):
        if s > 0:
            shapes[f"network.{index}.proj.weight"] = (dim, dims[s - 1], 3, 3)
            shapes[f"network.{index}.proj.bias"] = (dim,)
            index += 1
        if s == 2 and pos_size is not None:
            shapes[f"network.{index}.pos_embed"] = (1, dim, *pos_size)
            index += 1
        hidden, g = ratios[s] * dim, groups[s]
        for j in range(depths[s]):
            p = f"network.{index}.{j}."
            for name in ("layer_scale_1", "layer_scale_2", "norm1.weight", "norm1.bias",
                         "norm2.weight", "norm2.bias"):
                shapes[p + name] = (dim,)
            if mixers[s] == "attn":
                shapes[p + "token_mixer.qkv.weight"] = (3 * dim, dim)
                shapes[p + "token_mixer.proj.weight"] = (dim, dim)
                shapes[p + "token_mixer.proj.bias"] = (dim,)
            if cca:
                shapes[p + "mlp.weight_soft"] = (2,)
            shapes[p + "mlp.fc1.weight"] = (hidden, dim // g, 1, 1)
            shapes[p + "mlp.fc1.bias"] = (hidden,)
            shapes[p + "mlp.fc2.weight"] = (dim, hidden // g, 1, 1)
            shapes[p + "mlp.fc2.bias"] = (dim,)
        index += 1
    shapes.update({"norm.weight": (dims[-1],), "norm.bias": (dims[-1],)})
    if num_classes:
        shapes.update({"head.weight": (num_classes, dims[-1]), "head.bias": (num_classes,)})
    return shapes


S12 = dict(dims=(64, 128, 320, 512), depths=(2, 2, 6, 2))
T = dict(dims=(32, 64, 128, 256), depths=(2, 2, 4, 2), pos_size=(4, 4))  # 64x64 images


def random_state(shapes: dict, seed: int = 0, dtype=torch.float32) -> dict:
    """Random tensors of these shapes, scaled so that a deep network stays well conditioned:
    weights by their fan-in, norms near 1, layer scales and mixing logits of order 1."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
            t = 1 + 0.2 * t
        elif key.endswith("weight") and len(shape) > 1:
            t = t / np.sqrt(np.prod(shape[1:]))
        elif key.endswith(("layer_scale_1", "layer_scale_2")):
            t = 0.5 * t
        elif not key.endswith("weight_soft"):
            t = 0.1 * t
        state[key] = t.to(dtype)
    return state


# ----------------------------------------- the release's eval forward, on its own key names

def group_norm(x, sd, prefix):
    """GroupNorm with one group: statistics over (C, H, W) of each image."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    shape = (1, -1, 1, 1)
    return ((x - mean) / torch.sqrt(var + 1e-5) * sd[prefix + "weight"].view(shape)
            + sd[prefix + "bias"].view(shape))


def pooling(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False) - x


def attention(x, sd, prefix, head_dim=32):
    b, c, h, w = x.shape
    heads, n = c // head_dim, h * w
    tokens = x.flatten(2).transpose(1, 2)
    qkv = (tokens @ sd[prefix + "qkv.weight"].T).reshape(b, n, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * head_dim**-0.5, dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, c)
    out = out @ sd[prefix + "proj.weight"].T + sd[prefix + "proj.bias"]
    return out.transpose(1, 2).reshape(b, c, h, w)


def release_mlp(x, sd, prefix, shuffle):
    """The release's MLP in eval mode: MLP(x) alone (CCA dropped, no mixing weight)."""
    w1 = sd[prefix + "fc1.weight"]
    groups = x.shape[1] // w1.shape[1]
    h = F.gelu(F.conv2d(x, w1, sd[prefix + "fc1.bias"], groups=groups))
    if shuffle:  # ShuffleNet's: (N, G, C/G, H, W), axes 1 and 2 swapped
        n, c, hh, ww = h.shape
        h = h.view(n, groups, c // groups, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
    return F.conv2d(h, sd[prefix + "fc2.weight"], sd[prefix + "fc2.bias"], groups=groups)


def true_cca(x, hidden):
    """softmax(X^T X * hidden^-0.5) over the last axis, output X A^T; X the (N, C) tokens."""
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    attn = torch.softmax(tokens.transpose(1, 2) @ tokens * hidden**-0.5, dim=-1)
    return (tokens @ attn.transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)


def release_eval_forward(sd, x, shuffle):
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4,
                 padding=2)
    i = 0
    while any(k.startswith(f"network.{i}.") for k in sd):
        p = f"network.{i}."
        if p + "proj.weight" in sd:
            x = F.conv2d(x, sd[p + "proj.weight"], sd[p + "proj.bias"], stride=2, padding=1)
        elif p + "pos_embed" in sd:
            x = x + sd[p + "pos_embed"]
        else:
            j = 0
            while f"{p}{j}.norm1.weight" in sd:
                b = f"{p}{j}."
                t = group_norm(x, sd, b + "norm1.")
                mixed = (attention(t, sd, b + "token_mixer.") if b + "token_mixer.qkv.weight" in sd
                         else pooling(t))
                x = x + sd[b + "layer_scale_1"].view(1, -1, 1, 1) * mixed
                t = group_norm(x, sd, b + "norm2.")
                x = x + sd[b + "layer_scale_2"].view(1, -1, 1, 1) * release_mlp(t, sd, b + "mlp.",
                                                                                 shuffle)
                j += 1
        i += 1
    x = group_norm(x, sd, "norm.").mean(dim=(2, 3))
    return x @ sd["head.weight"].T + sd["head.bias"]


def build_float64(converted):
    """The converted model in float64, loaded from the float64 tensors without rounding."""
    model = timm.create_model(converted.model, **converted.model_kwargs).double()
    model.load_state_dict(converted.state, strict=True)
    return model


def assert_release_function(model, release, x, shuffle):
    expected = release_eval_forward(release, x, shuffle)
    with torch.no_grad():
        out = model.eval()(x)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


# -------------------------------------------------------------------------------------- tests

def test_the_layout_helper_writes_the_release_listings():
    # The synthetic layouts below are the release's: the helper reproduces both listings.
    assert release_layout(**S12, ratios=(8,) * 4, groups=(1,) * 4, cca=False) == listing(
        DENSE_S12)
    assert release_layout(**S12, ratios=(8,) * 4, groups=(4,) * 4, cca=True) == listing(
        SHUFFLE_S12)


@pytest.mark.parametrize("release,shuffle,model,kwargs", [
    (SHUFFLE_S12, True, "schemeformer_ppaa_s12_e8_g4_shuffle", {}),
    (SHUFFLE_S12, False, "schemeformer_ppaa_s12_e8_g4", {}),
    (DENSE_S12, None, "metaformer_ppaa_s12", {"mlp_ratios": [8] * 4, "mlp_groups": [1] * 4}),
])
def test_release_listings_load_strictly(release, shuffle, model, kwargs):
    official = random_state(listing(release))
    converted = convert_schemeformer({"model": official}, channel_shuffle=shuffle)
    assert converted.model == model
    assert converted.registered == (not kwargs)
    assert {k: converted.model_kwargs[k] for k in kwargs} == kwargs
    assert {"num_classes": 1000, "in_chans": 3, "img_size": 224}.items() <= (
        converted.model_kwargs.items())
    built = timm.create_model(converted.model, **converted.model_kwargs)
    assert converted.state.keys() == built.state_dict().keys()
    built.load_state_dict(converted.state, strict=True)
    assert len(official) == sum(1 for k in converted.state if not k.endswith("mlp.progress"))
    mlps = [m for m in built.modules() if isinstance(m, SchemeMlp)]
    assert all(m.channel_shuffle == bool(shuffle) for m in mlps)
    assert len(mlps) == (12 if release == SHUFFLE_S12 else 0)


@pytest.mark.parametrize("release,shuffle", [(SHUFFLE_S12, True), (DENSE_S12, False)])
def test_converted_release_models_compute_the_release_eval_function(release, shuffle):
    official = random_state(listing(release), seed=1, dtype=torch.float64)
    model = build_float64(convert_schemeformer(official, channel_shuffle=shuffle))
    assert_release_function(model, official, torch.randn(1, 3, 224, 224, dtype=torch.float64),
                            shuffle)


# Synthetic checkpoints in the release's layout: dense E=4, block diagonal with and without the
# shuffle, and per-stage E and G (G=1 with CCA included).
SYNTHETIC = {
    "dense_e4": (dict(**T, ratios=(4,) * 4, groups=(1,) * 4, cca=False), None,
                 "metaformer_ppaa_t"),
    "bd_e8_g4": (dict(**T, ratios=(8,) * 4, groups=(4,) * 4, cca=True), False,
                 "schemeformer_ppaa_t_e8_g4"),
    "bd_e8_g4_shuffle": (dict(**T, ratios=(8,) * 4, groups=(4,) * 4, cca=True), True,
                         "metaformer_ppaa_t"),
    "per_stage_shuffle": (dict(dims=(32, 64, 64, 96), depths=(1, 2, 1, 1), pos_size=(2, 4),
                               ratios=(4, 4, 8, 8), groups=(1, 2, 4, 8), cca=True, num_classes=5),
                          True, "metaformer_ppaa_s12"),
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_converted_model_computes_the_release_eval_function(case):
    layout, shuffle, name = SYNTHETIC[case]
    official = random_state(release_layout(**layout), seed=2, dtype=torch.float64)
    converted = convert_schemeformer(official, channel_shuffle=shuffle)
    assert converted.model == name
    model = build_float64(converted)
    h, w = [16 * s for s in layout["pos_size"]]  # the release adds its embedding unresized
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    assert_release_function(model, official, x, bool(shuffle))
    # deploy multiplies a back into fc2: still the release's eval function
    vitmix.deploy(model)
    assert_release_function(model, official, x, bool(shuffle))


def test_the_re_creation_tells_shuffle_from_no_shuffle():
    # The same weights converted with the wrong answer compute another function: the check
    # above would catch a shuffle that was dropped or added.
    layout, _, _ = SYNTHETIC["bd_e8_g4_shuffle"]
    official = random_state(release_layout(**layout), seed=2, dtype=torch.float64)
    model = build_float64(convert_schemeformer(official, channel_shuffle=False)).eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    shuffled = release_eval_forward(official, x, shuffle=True)
    assert (out - shuffled).abs().max() > 1e-3 * shuffled.abs().max()
    torch.testing.assert_close(out, release_eval_forward(official, x, shuffle=False))


def test_training_continues_from_the_release_mixing_logits():
    layout, shuffle, _ = SYNTHETIC["bd_e8_g4_shuffle"]
    official = random_state(release_layout(**layout), seed=3, dtype=torch.float64)
    converted = convert_schemeformer(official, channel_shuffle=shuffle)
    model = build_float64(converted)
    block, prefix = model.stages[1].blocks[1], "network.2.1.mlp."
    torch.testing.assert_close(block.mlp.mix_logits.detach(), official[prefix + "weight_soft"])
    w0, w1 = torch.softmax(official[prefix + "weight_soft"], dim=0)
    assert converted.mixing_weights["stages.1.blocks.1.mlp"] == pytest.approx(float(w0))
    x = torch.randn(2, 64, 5, 6, dtype=torch.float64)
    # Training mode: the release's MLP (unscaled, as its eval returns it) plus (1 - a) times
    # the true-covariance CCA; the release would give w0 * MLP + w1 * (its reshape CCA).
    expected = release_mlp(x, official, prefix, shuffle=True) + w1 * true_cca(x, 8 * 64)
    torch.testing.assert_close(block.mlp.train()(x), expected)


def test_float32_checkpoints_stay_float32_and_match_to_rounding():
    layout, shuffle, _ = SYNTHETIC["bd_e8_g4_shuffle"]
    official = random_state(release_layout(**layout), seed=4)
    converted = convert_schemeformer(official, channel_shuffle=shuffle)
    assert {t.dtype for t in converted.state.values()} == {torch.float32}
    model = converted.build().eval()
    x = torch.randn(1, 3, 64, 64)
    expected = release_eval_forward({k: v.double() for k, v in official.items()}, x.double(),
                                    shuffle)
    with torch.no_grad():
        out = model(x).double()
    assert (out - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


def test_shuffle_must_be_said_for_grouped_mlps_only():
    grouped = random_state(release_layout(**T, ratios=(8,) * 4, groups=(4,) * 4, cca=True))
    with pytest.raises(ValueError, match=r"network.0.0.mlp.fc1.weight is a grouped convolution "
                                         r"\(4 groups\).*--channel-shuffle.*--no-channel-shuffle"):
        convert_schemeformer(grouped)
    with pytest.raises(ValueError, match="channel_shuffle must be True, False or None, got 'y'"):
        convert_schemeformer(grouped, channel_shuffle="y")
    dense = random_state(release_layout(**T, ratios=(4,) * 4, groups=(1,) * 4, cca=False))
    for shuffle in (None, False, True):  # with one group the shuffle is the identity
        assert convert_schemeformer(dense, channel_shuffle=shuffle).model == "metaformer_ppaa_t"


def test_from_official_and_wrappers():
    official = random_state(release_layout(**T, ratios=(8,) * 4, groups=(4,) * 4, cca=True))
    direct = convert_schemeformer(official, channel_shuffle=True).state
    for wrapped in (official, {"model": official}, {"state_dict": official},
                    {f"module.{k}": v for k, v in official.items()}):
        state = from_official(wrapped, arch="schemeformer", channel_shuffle=True)
        assert state.keys() == direct.keys()
        assert all(torch.equal(state[k], direct[k]) for k in direct)
    with pytest.raises(ValueError, match="channel_shuffle is an option of arch 'schemeformer'"):
        from_official(official, arch="groupmixformer", channel_shuffle=True)


def _renamed(state: dict, old: str, new: str) -> dict:
    return {k.replace(old, new, 1) if k.startswith(old) else k: v for k, v in state.items()}


def _mutations():
    base = random_state(release_layout(**T, ratios=(4,) * 4, groups=(2,) * 4, cca=True))
    fc2 = "network.0.0.mlp.fc2.weight"
    yield "missing", {k: v for k, v in base.items() if k != "network.0.1.layer_scale_1"}, \
        r"1 missing keys \(e.g. network.0.1.layer_scale_1\)"
    yield "extra", dict(base, cls_token=torch.zeros(1)), r"1 unexpected keys \(e.g. cls_token\)"
    narrow = {"network.0.1.mlp.fc1.weight": torch.zeros(64, 32, 1, 1)}
    yield "block_differs", dict(base, **narrow), \
        (r"each block must match its stage's first block.*network.0.1.mlp.fc1.weight "
         r"\(64, 32, 1, 1\), expected \(128, 16, 1, 1\)")
    yield "fc2_groups", dict(base, **{fc2: torch.zeros(32, 128, 1, 1)}), \
        r"network.0.0.mlp.fc2.weight has shape \(32, 128, 1, 1\).*expected \(32, 64, 1, 1\)"
    yield "fc1_not_1x1", dict(base, **{"network.0.0.mlp.fc1.weight": torch.zeros(128, 16)}), \
        r"network.0.0.mlp.fc1.weight has shape \(128, 16\); expected a 1x1 convolution"
    yield "no_stem", {k: v for k, v in base.items() if not k.startswith("patch_embed")}, \
        "the checkpoint has no patch_embed.proj.weight"
    yield "gap", {k: v for k, v in base.items() if not k.startswith("network.1.")}, \
        "network.1 is missing: the network list runs from network.0 to network.7"
    yield "no_downsample", _renamed(base, "network.1.proj.", "network.1.0.proj."), \
        "network.1 \\(blocks\\) follows the blocks of network.0 without a downsample"
    yield "dead_mlp", dict(base, **{"network.0.0.mlp.weight_soft":
                                    torch.tensor([-1e4, 1e4], dtype=torch.float64)}), \
        "the mixing logits of stages.0.blocks.0.mlp give the MLP a weight of 0.0"
    yield "groupmixformer", {"groupmixformer_backbone.0.gma_stage.0.norm1.weight": torch.ones(2)}, \
        r"no network\.\{i\} keys .* use arch 'groupmixformer'"
    yield "not_tensors", {"network.0.0.norm1.weight": [1.0]}, "not a tensor"


@pytest.mark.parametrize("case,state,message", list(_mutations()),
                         ids=[case for case, _, _ in _mutations()])
def test_bad_state_dicts_raise_one_clear_error(case, state, message):
    with pytest.raises(ValueError, match=message):
        convert_schemeformer(state, channel_shuffle=False)


def test_a_converted_state_dict_is_recognised():
    official = random_state(release_layout(**T, ratios=(4,) * 4, groups=(1,) * 4, cca=False))
    converted = convert_schemeformer(official).state
    with pytest.raises(ValueError, match="it looks converted already: load it directly"):
        convert_schemeformer(converted)


CLI_LAYOUT = dict(dims=(32, 64, 64, 64), depths=(1, 1, 1, 1), pos_size=(2, 2),
                  ratios=(8,) * 4, groups=(4,) * 4, cca=True, num_classes=2)


def release_checkpoint(path: Path, seed: int = 5, model: str | None = SHUFFLE_S12,
                       ema: bool = False, layout: dict | None = None) -> dict:
    """A release-format checkpoint file as timm's train script writes it (its arguments as an
    argparse.Namespace beside the weights; without ``model``, a bare state dict); returns the
    tensors of its state_dict entry. ``ema``: a state_dict_ema entry too (other tensors)."""
    official = random_state(release_layout(**(layout or CLI_LAYOUT)), seed=seed)
    if model is None:
        torch.save(official, path)
        return official
    ckpt = {"epoch": 3, "arch": "MetaFormer", "state_dict": official, "version": 2,
            "metric": 12.5, "args": argparse.Namespace(model=model, lr=1e-3, sched="cosine")}
    if ema:
        ckpt["state_dict_ema"] = {k: v + 1 for k, v in official.items()}
    torch.save(ckpt, path)
    return official


def test_cli_import_weights_writes_a_file_that_names_its_model(tmp_path, capsys):
    src, out = tmp_path / "scheme.pth", tmp_path / "scheme.safetensors"
    bare = tmp_path / "bare.pth"
    release_checkpoint(bare, model=None)

    # Grouped MLPs and no model name: the command asks whether they shuffled, in one line,
    # before writing.
    assert cli_main(["import-weights", str(bare), str(out), "--arch", "schemeformer"]) == 2
    assert "--channel-shuffle" in capsys.readouterr().err and not out.exists()

    # A timm train checkpoint names its model: no --arch, no --channel-shuffle needed.
    official = release_checkpoint(src)
    assert cli_main(["import-weights", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model: metaformer_ppaa_s12" in printed and "release's eval function" in printed
    assert "converted entry 'state_dict'\n" in printed
    assert f"args.model: {SHUFFLE_S12} (ShuffleGroupLiteAttMlp" in printed
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["model"] == "metaformer_ppaa_s12" and meta["deployed"] == "0"
    assert (meta["converted_entry"], meta["release_model"]) == ("state_dict", SHUFFLE_S12)
    kwargs = json.loads(meta["model_kwargs"])
    assert kwargs["channel_shuffle"] is True and kwargs["mlp_groups"] == [4] * 4
    assert (kwargs["img_size"], kwargs["num_classes"], kwargs["in_chans"]) == (32, 2, 3)

    # The loader `vitmix eval` uses: the file names its model and arguments.
    model = read_model(out, meta["model"]).build()
    x = torch.randn(2, 3, 32, 32)
    expected = release_eval_forward({k: v.double() for k, v in official.items()}, x.double(),
                                    True)
    with torch.no_grad():
        got = model.eval()(x).double()
    assert (got - expected).abs().max().item() < 1e-4 * expected.abs().max().item()

    # The deprecated alias forwards the new options.
    old = tmp_path / "old.safetensors"
    assert cli_main(["convert", str(bare), str(old), "--arch", "schemeformer",
                     "--channel-shuffle"]) == 0
    assert "deprecated" in capsys.readouterr().err
    with safe_open(str(old), framework="pt") as f:
        assert f.metadata()["model_kwargs"] == meta["model_kwargs"]

    # .pth output holds the tensors only, and says so.
    as_pth = tmp_path / "scheme_out.pth"
    assert cli_main(["import-weights", str(bare), str(as_pth), "--arch", "schemeformer",
                     "--no-channel-shuffle"]) == 0
    assert "holds the tensors only" in capsys.readouterr().out
    assert torch.load(as_pth, weights_only=True).keys() == model.state_dict().keys()


DENSE_LAYOUT = dict(CLI_LAYOUT, ratios=(8,) * 4, groups=(1,) * 4, cca=False)


def _refused(capsys, argv: list[str], out: Path) -> str:
    """The one line a refused import prints; nothing is written."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    return err


def test_import_weights_refuses_options_that_contradict_the_stored_model_name(tmp_path, capsys):
    src, out = tmp_path / "scheme.pth", tmp_path / "out.safetensors"
    release_checkpoint(src)
    err = _refused(capsys, ["import-weights", str(src), str(out), "--arch", "groupmixformer"],
                   out)
    assert f"--arch groupmixformer contradicts the checkpoint's args.model '{SHUFFLE_S12}', a " \
           f"model of the schemeformer release; leave --arch out" in err
    err = _refused(capsys, ["import-weights", str(src), str(out), "--no-channel-shuffle"], out)
    assert f"--no-channel-shuffle contradicts the checkpoint's args.model '{SHUFFLE_S12}', " \
           f"whose ShuffleGroupLiteAttMlp shuffles its hidden channels" in err

    # Options that agree with the name are accepted.
    assert cli_main(["import-weights", str(src), str(out), "--arch", "schemeformer",
                     "--channel-shuffle"]) == 0
    capsys.readouterr()

    # A name whose MLPs the weights do not have, and a release model vitmix cannot build.
    dense_named = tmp_path / "dense_named.pth"
    release_checkpoint(dense_named, model=DENSE_S12)
    err = _refused(capsys, ["import-weights", str(dense_named), str(tmp_path / "d.safetensors")],
                   tmp_path / "d.safetensors")
    assert f"args.model '{DENSE_S12}' has dense MLPs (Mlp), but its weights hold grouped " \
           f"ones" in err
    se = tmp_path / "se.pth"
    release_checkpoint(se, model="grouporgsemlpformer_ppaa_s12_224")
    err = _refused(capsys, ["import-weights", str(se), str(tmp_path / "se.safetensors")],
                   tmp_path / "se.safetensors")
    assert "GroupLiteSEMlp MLPs, which vitmix does not implement" in err


def test_import_weights_says_which_entry_it_converted(tmp_path, capsys):
    src, out = tmp_path / "scheme.pth", tmp_path / "out.safetensors"
    official = release_checkpoint(src, ema=True)
    assert cli_main(["import-weights", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "converted entry 'state_dict' (the trained weights; the checkpoint also holds " \
           "'state_dict_ema', the EMA weights" in printed
    state, _ = vitmix.checkpoints.load_weights(out)
    # The trained weights, not the EMA's (which differ by one everywhere).
    assert torch.equal(state["stages.0.downsample.weight"], official["patch_embed.proj.weight"])

    # args as a dict (a checkpoint re-saved without the Namespace), dense MLPs: no options.
    dense, dense_out = tmp_path / "dense.pth", tmp_path / "dense.safetensors"
    tensors = random_state(release_layout(**DENSE_LAYOUT), seed=2)
    torch.save({"state_dict": tensors, "args": {"model": DENSE_S12}}, dense)
    assert cli_main(["import-weights", str(dense), str(dense_out)]) == 0
    printed = capsys.readouterr().out
    assert "converted entry 'state_dict'\n" in printed and "model: metaformer_ppaa_s12" in printed
    with safe_open(str(dense_out), framework="pt") as f:
        assert json.loads(f.metadata()["model_kwargs"])["mlp_groups"] == [1] * 4

    # A name vitmix does not know: the shapes decide, and the option is still needed.
    fork, fork_out = tmp_path / "fork.pth", tmp_path / "fork.safetensors"
    release_checkpoint(fork, model="my_schemeformer_s12")
    assert cli_main(["import-weights", str(fork), str(fork_out), "--arch", "schemeformer",
                     "--channel-shuffle"]) == 0
    assert "args.model: my_schemeformer_s12, not a SCHEME release model vitmix knows" \
        in capsys.readouterr().out


def image_tree(root: Path, classes=("a", "b"), per_class=2, size=32) -> Path:
    """train/ and val/ of random RGB PNGs (the ImageFolder reader wants both)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_vitmix_eval_needs_only_the_converted_checkpoint(tmp_path, capsys):
    src, out = tmp_path / "scheme.pth", tmp_path / "scheme.safetensors"
    release_checkpoint(src)
    assert cli_main(["import-weights", str(src), str(out), "--arch", "schemeformer",
                     "--channel-shuffle"]) == 0
    capsys.readouterr()
    tree = image_tree(tmp_path / "data")
    assert cli_main(["eval", "--checkpoint", str(out), "--data", str(tree), "--workers", "0",
                     "--device", "cpu", "--out", str(tmp_path / "eval")]) == 0
    assert "metaformer_ppaa_s12 on" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "scheme_eval.json").read_text())["count"] == 4


def test_eval_without_model_on_a_file_that_names_none(tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"
    save_weights({"x": torch.zeros(1)}, bare, metadata={"format": "pt"})
    assert cli_main(["eval", "--checkpoint", str(bare)]) == 2
    assert "does not name its model; pass --model NAME" in capsys.readouterr().err
