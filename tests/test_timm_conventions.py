"""timm's model conventions, the same in both families: device and dtype, initialisation after
``to_empty()``, forward_intermediates and prune_intermediate_layers, feature wrappers, SCHEME's
arguments, and the registered names with their defaults."""

import pytest
import timm
import torch

import vitmix  # noqa: F401  (registers the models)
from vitmix.layers import SchemeMlp
from vitmix.layers.stems import ConvStem
from vitmix.models.vitmix_groupmixformer import GroupMixFormer
from vitmix.models.vitmix_metaformer import MetaFormer


def tiny_metaformer(**kwargs) -> MetaFormer:
    args = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 64), mlp_ratios=8, mlp_groups=4,
                cca=True, img_size=64, num_classes=10)
    return MetaFormer(**dict(args, **kwargs))


def tiny_groupmixformer(**kwargs) -> GroupMixFormer:
    args = dict(dims=(20, 40, 40, 80), depths=(1, 1, 2, 1), mlp_ratios=8, mlp_groups=4,
                cca=True, img_size=64, num_classes=10)
    return GroupMixFormer(**dict(args, **kwargs))


FAMILIES = {"metaformer": tiny_metaformer, "groupmixformer": tiny_groupmixformer}
family = pytest.mark.parametrize("build", FAMILIES.values(), ids=FAMILIES.keys())


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


@family
def test_device_and_dtype_reach_every_tensor(build):
    model = build(device="meta", dtype=torch.float64)
    tensors = _tensors(model)
    assert {t.device.type for t in tensors.values()} == {"meta"}
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float64}
    # BatchNorm's step counter stays an integer.
    assert all(k.endswith("num_batches_tracked") for k, t in tensors.items()
               if not t.is_floating_point())
    assert sum(isinstance(m, SchemeMlp) for m in model.modules()) == 5


@family
def test_float64_model_matches_the_float32_one(build):
    torch.manual_seed(0)
    model32 = build().eval()
    model64 = build(dtype=torch.float64).eval()
    model64.load_state_dict(model32.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model64(x)
        assert expected.dtype == torch.float64
        torch.testing.assert_close(model32(x.float()).double(), expected, rtol=1e-4, atol=1e-5)


@family
def test_meta_model_materialised_and_initialised_trains(build):
    torch.manual_seed(0)
    fresh = build()
    model = build(device="meta")
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in model.state_dict().values():
            t.fill_(float("nan") if t.is_floating_point() else 7)
    model.init_weights()
    got, ref = model.state_dict(), fresh.state_dict()
    assert list(got) == list(ref)
    for key, t in got.items():
        assert torch.isfinite(t.double()).all(), key
        if ref[key].numel() == 1 or (ref[key] == ref[key].flatten()[0]).all():
            # Constants (norms, layer scales, biases, running statistics) as the constructor
            # sets them.
            torch.testing.assert_close(t, ref[key], rtol=0, atol=0, msg=key)
        elif t.numel() >= 256:
            # Random weights from the constructor's distribution.
            assert abs(t.std() - ref[key].std()) <= 0.2 * ref[key].std(), key
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    torch.nn.functional.cross_entropy(model.train()(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["schemeformer_ppaa_t_e8_g4", "groupmixformer_m_scheme_e8_g4"])
def test_create_model_on_the_meta_device(name):
    model = timm.create_model(name, device="meta", dtype=torch.bfloat16)
    assert {(t.device.type, t.dtype) for t in model.parameters()} == {("meta", torch.bfloat16)}


# forward_intermediates, as timm's own test_models.py checks every model.

@family
@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_forward_intermediates_follow_feature_info(build, grad_checkpointing):
    model = build().eval()
    model.set_grad_checkpointing(grad_checkpointing)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    assert len(intermediates) == len(model.feature_info) == 4
    for info, feat in zip(model.feature_info, intermediates, strict=True):
        r = info["reduction"]
        assert feat.shape == (2, info["num_chs"], 64 // r, 96 // r)
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    torch.testing.assert_close(intermediates[-1], final)


@family
def test_forward_intermediates_indices_norm_and_stop_early(build):
    model = build().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.norm.weight.normal_()  # a fresh norm is close to the identity
        model.norm.bias.normal_()
        _, every = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        _, normed = model.forward_intermediates(x, indices=[2, 3], norm=True)
        expected_norm = model.norm(every[3])
    for got, want in zip(last_two + picked, every[2:] + [every[0], every[2]], strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(final, every[1])  # it stopped after stage 1
    torch.testing.assert_close(early[0], every[1])
    # The final norm belongs to the last stage only.
    torch.testing.assert_close(normed[0], every[2])
    torch.testing.assert_close(normed[1], expected_norm)
    assert not torch.allclose(normed[1], every[3])


@family
@pytest.mark.parametrize("kwargs,message", [
    (dict(output_fmt="NHWC"), "output_fmt must be one of 'NCHW', got 'NHWC'"),
    (dict(indices=5), "indices=5 asks for the last 5 stages; expected 1 to 4"),
    (dict(indices=0), "indices=0 asks for the last 0 stages"),
    (dict(indices=[1, 4]), r"stage index 4 in indices=\[1, 4\] is out of range; expected -4 to 3"),
    (dict(indices=[-5]), "stage index -5"),
    (dict(indices="all"), "indices must be None, a number of last stages or a sequence"),
])
def test_forward_intermediates_bad_arguments(build, kwargs, message):
    model = build()
    with pytest.raises(ValueError, match=message):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), **kwargs)


@family
def test_prune_intermediate_layers(build):
    model = build().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, before = model.forward_intermediates(x)
    assert model.prune_intermediate_layers([0, -3]) == [0, 1]
    assert len(model.stages) == 2
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.head, torch.nn.Identity)
    assert model.num_features == model.feature_info[1]["num_chs"]
    with torch.no_grad():
        final, after = model.forward_intermediates(x)
        torch.testing.assert_close(final, before[1])
        torch.testing.assert_close(model(x), before[1])  # no pooling, no norm, no head
    for got, want in zip(after, before[:2], strict=True):
        torch.testing.assert_close(got, want)


@family
def test_prune_keeps_the_norm_of_the_last_stage_unless_asked(build):
    model = build()
    norm = model.norm
    model.prune_intermediate_layers(indices=(1, 3), prune_head=False)
    assert model.norm is norm and isinstance(model.head, torch.nn.Linear)
    model.prune_intermediate_layers(indices=(3,), prune_norm=True)
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.head, torch.nn.Identity)


@pytest.mark.parametrize("name", ["schemeformer_ppaa_t_e8_g4", "groupmixformer_m"])
@pytest.mark.parametrize("feature_cls", ["getter", None])
def test_features_only_with_both_feature_wrappers(name, feature_cls):
    torch.manual_seed(0)
    full = timm.create_model(name).eval()
    extra = {} if feature_cls is None else dict(feature_cls=feature_cls)
    feats = timm.create_model(name, features_only=True, out_indices=(1, 3), **extra).eval()
    assert feats.feature_info.channels() == [full.feature_info[i]["num_chs"] for i in (1, 3)]
    assert feats.feature_info.reduction() == [8, 32]
    state = full.state_dict()
    if feature_cls is None:  # timm's list wrapper flattens the stages: stages.3 -> stages_3
        state = {k.replace("stages.", "stages_", 1): v for k, v in state.items()}
    else:  # the getter wraps the pruned model
        state = {f"model.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in feats.state_dict()}
    feats.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = full.forward_intermediates(x, indices=(1, 3), intermediates_only=True)
        for got, want in zip(feats(x), expected, strict=True):
            torch.testing.assert_close(got, want)


# SCHEME's arguments, the same in both families.

@family
def test_per_stage_groups_and_cosine_schedule(build):
    model = build(mlp_groups=(1, 2, 4, 4), cca_schedule="cosine")
    per_stage = [[m.groups for m in stage.modules() if isinstance(m, SchemeMlp)]
                 for stage in model.stages]
    assert per_stage == [[1], [2], [4, 4], [4]]
    mlps = [m for m in model.modules() if isinstance(m, SchemeMlp)]
    assert all(m.cca_schedule == "cosine" and m.has_cca for m in mlps)


@family
def test_dense_stages_use_timm_mlp(build):
    model = build(mlp_groups=(1, 4, 4, 4), cca=False)
    assert type(model.stages[0].blocks[0].mlp) is timm.layers.Mlp
    assert type(model.stages[1].blocks[0].mlp) is SchemeMlp


@family
@pytest.mark.parametrize("kwargs,message", [
    (dict(mlp_groups=2.5), "mlp_groups must be a positive integer, got 2.5"),
    (dict(mlp_groups=(1, 2, 0, 4)), r"mlp_groups\[2\] must be a positive integer, got 0"),
    (dict(mlp_groups=(2, 4)), r"mlp_groups needs one value or one entry per stage \(4 stages\)"),
    (dict(mlp_ratios=0), "mlp_ratios must be a positive number, got 0"),
    (dict(mlp_ratios=(4, 4, "8", 4)), r"mlp_ratios\[2\] must be a positive number, got '8'"),
    (dict(mlp_ratios=0.01), "mlp_ratio 0.01 gives no hidden channels"),
    (dict(cca="yes"), "cca must be True or False, got 'yes'"),
    (dict(cca_schedule="linear"), "cca_schedule must be one of 'learned', 'cosine', got 'linear'"),
    (dict(num_classes=-1), "num_classes must be a non-negative integer, got -1"),
    (dict(in_chans=0), "in_chans must be a positive integer, got 0"),
    (dict(depths=(1, 1, 0, 1)), r"depths\[2\] must be a positive integer, got 0"),
    (dict(depths=4), "depths must be a sequence with one positive integer per stage, got 4"),
    (dict(dims=(16, 32, 64)), "dims and depths need one entry per stage, got 3 dims and 4"),
    (dict(drop_rate=1.5), r"drop_rate must be a probability in \[0, 1\], got 1.5"),
    (dict(proj_drop_rate=-0.1), "proj_drop_rate must be a probability"),
    (dict(drop_path_rate="0.1"), "drop_path_rate must be a probability"),
    (dict(global_pool="max"), "global_pool must be 'avg' or '', got 'max'"),
    (dict(img_size=48), "img_size 48 is not supported"),
    (dict(typo=1), r"got unexpected arguments: \['typo'\]"),
])
def test_bad_arguments_raise_one_clear_error(build, kwargs, message):
    error = TypeError if "typo" in kwargs else ValueError
    with pytest.raises(error, match=message):
        build(**kwargs)


# Every registered name with its defaults. The table is written out here, apart from the
# registration code, so that a change to either shows.

METAFORMER_ARCHS = {  # arch: (depths, dims, default image size)
    "t": ((2, 2, 4, 2), (32, 64, 128, 256), 64),
    "s12": ((2, 2, 6, 2), (64, 128, 320, 512), 224),
    "s24": ((4, 4, 12, 4), (64, 128, 320, 512), 224),
    "s36": ((6, 6, 18, 6), (64, 128, 320, 512), 224),
}
METAFORMER_MLPS = {"": (4, 1, False), "_e4_g2": (4, 2, True), "_e8_g2": (8, 2, True),
                   "_e8_g4": (8, 4, True), "_e8_g8": (8, 8, True), "_e16_g8": (16, 8, True)}
METAFORMER_DEFAULTS = {
    ("metaformer" if not mlp else "schemeformer") + f"_ppaa_{arch}{mlp}": (*sizes, *mixer)
    for arch, sizes in METAFORMER_ARCHS.items() for mlp, mixer in METAFORMER_MLPS.items()
}
# The authors' release's shuffle model: the shapes of _e8_g4, the hidden channels shuffled.
METAFORMER_DEFAULTS["schemeformer_ppaa_s12_e8_g4_shuffle"] = METAFORMER_DEFAULTS[
    "schemeformer_ppaa_s12_e8_g4"]
# The tiny models with the conv stem (vitmix train's default model among them).
for _name in ("metaformer_ppaa_t", "schemeformer_ppaa_t_e8_g4"):
    METAFORMER_DEFAULTS[f"{_name}_convstem"] = METAFORMER_DEFAULTS[_name]
GROUPMIXFORMER_DEFAULTS = {  # name: (dims, depths, mlp ratios, groups, cca)
    "groupmixformer_m": ((40, 80, 160, 160), (3, 3, 12, 4), (4, 4, 4, 4), 1, False),
    "groupmixformer_t": ((80, 160, 200, 240), (4, 4, 12, 4), (4, 4, 4, 4), 1, False),
    "groupmixformer_s": ((80, 160, 320, 320), (2, 4, 12, 4), (4, 4, 4, 4), 1, False),
    "groupmixformer_b": ((200, 240, 320, 480), (8, 8, 12, 8), (2, 2, 4, 4), 1, False),
    "groupmixformer_l": ((240, 320, 360, 480), (8, 10, 30, 10), (4, 4, 2, 2), 1, False),
    "groupmixformer_m_scheme_e8_g4": ((40, 80, 160, 160), (3, 3, 12, 4), (8, 8, 8, 8), 4, True),
    "groupmixformer_t_scheme_e8_g4": ((80, 160, 200, 240), (4, 4, 12, 4), (8, 8, 8, 8), 4, True),
}


def test_exactly_these_names_are_registered():
    names = set(timm.list_models(["metaformer_*", "schemeformer_*", "groupmixformer_*"]))
    assert names == set(METAFORMER_DEFAULTS) | set(GROUPMIXFORMER_DEFAULTS)
    assert len(names) == 34


def _mlp_layout(block) -> tuple[float, int, bool]:
    mlp = block.mlp
    if isinstance(mlp, SchemeMlp):
        return mlp.hidden_features / mlp.in_features, mlp.groups, mlp.has_cca
    return mlp.fc1.weight.shape[0] / mlp.fc1.weight.shape[1], 1, False


@pytest.mark.parametrize("name", sorted(METAFORMER_DEFAULTS))
def test_registered_metaformer_defaults(name):
    depths, dims, size, ratio, groups, cca = METAFORMER_DEFAULTS[name]
    model = timm.create_model(name, device="meta")
    assert isinstance(model, MetaFormer)
    assert tuple(len(s.blocks) for s in model.stages) == depths
    assert tuple(info["num_chs"] for info in model.feature_info) == dims
    assert model.img_size == (size, size)
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    assert model.pretrained_cfg["pool_size"] == (size // 32, size // 32)
    # The SCHEME release evaluates at crop 0.95; the tiny models are vitmix's own.
    assert model.pretrained_cfg["crop_pct"] == (0.9 if size == 64 else 0.95)
    assert model.num_classes == 1000
    mixers = [type(s.blocks[0].token_mixer).__name__ for s in model.stages]
    assert mixers == ["Pooling", "Pooling", "SelfAttention", "SelfAttention"]
    assert [s.pos_embed is not None for s in model.stages] == [False, False, True, False]
    blocks = [b for s in model.stages for b in s.blocks]
    assert {_mlp_layout(b) for b in blocks} == {(ratio, groups, cca)}
    assert {m.cca_schedule for m in model.modules() if isinstance(m, SchemeMlp)} <= {"learned"}
    assert {m.channel_shuffle for m in model.modules() if isinstance(m, SchemeMlp)} <= {
        name.endswith("_shuffle")}
    # first_conv names the convolution that sees the image.
    first_conv = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.in_channels == 3
    if name.endswith("_convstem"):
        assert isinstance(model.stages[0].downsample, ConvStem)
        assert first_conv is model.stages[0].downsample[0]
    else:
        assert isinstance(model.stages[0].downsample, torch.nn.Conv2d)  # the patch stem
        assert model.stages[0].downsample.kernel_size == (7, 7)


@pytest.mark.parametrize("name", sorted(GROUPMIXFORMER_DEFAULTS))
def test_registered_groupmixformer_defaults(name):
    dims, depths, ratios, groups, cca = GROUPMIXFORMER_DEFAULTS[name]
    model = timm.create_model(name, device="meta")
    assert isinstance(model, GroupMixFormer)
    assert tuple(len(s.blocks) for s in model.stages) == depths
    assert tuple(info["num_chs"] for info in model.feature_info) == dims
    assert model.img_size == (224, 224) and model.num_classes == 1000
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.pretrained_cfg["first_conv"] == "stem.conv1"
    assert model.pretrained_cfg["pool_size"] == (7, 7)
    assert model.pretrained_cfg["crop_pct"] == 0.875  # the release: resize to 256, centre 224
    assert [{_mlp_layout(b) for b in s.blocks} for s in model.stages] == [
        {(r, groups, cca)} for r in ratios]
    attn = [b.attn for s in model.stages for b in s.blocks]
    assert {(a.num_heads, a.attn, a.impl, a.qkv.bias is not None) for a in attn} == {
        (8, "factorized", "fast", True)}
