"""GroupMixFormer: the reference table, timm conventions, features, SCHEME variants, errors."""

import pytest
import timm
import torch

import vitmix  # noqa: F401  (registers the models)
from vitmix.complexity import count_macs, count_params
from vitmix.layers.group_mix import GroupMixAttention
from vitmix.layers.scheme import SchemeMlp
from vitmix.models.vitmix_groupmixformer import GroupMixFormer

# (model, params in millions, MACs at 224 in G), from the reference table (authors' release,
# counted with fvcore).
REFERENCE = {
    "groupmixformer_m": (5.73, 1.35),
    "groupmixformer_t": (10.95, 3.72),
    "groupmixformer_s": (22.42, 5.16),
    "groupmixformer_b": (45.83, 17.55),
    "groupmixformer_l": (71.83, 38.25),
}


def tiny(**kwargs) -> GroupMixFormer:
    """A small GroupMixFormer for fast structural tests."""
    args = dict(dims=(20, 40, 40, 80), depths=(1, 1, 2, 1), num_classes=10, img_size=64)
    args.update(kwargs)
    return GroupMixFormer(**args)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_params_match_reference(name):
    with torch.device("meta"):  # no memory, no init: just the shapes
        params = count_params(timm.create_model(name))
    assert abs(params / 1e6 - REFERENCE[name][0]) / REFERENCE[name][0] < 0.005


@pytest.mark.parametrize("name", ["groupmixformer_m", "groupmixformer_t"])
def test_macs_match_reference(name):
    macs = count_macs(timm.create_model(name, impl="reference"), 224)
    assert abs(macs / 1e9 - REFERENCE[name][1]) / REFERENCE[name][1] < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("name", ["groupmixformer_s", "groupmixformer_b", "groupmixformer_l"])
def test_macs_match_reference_large(name):
    macs = count_macs(timm.create_model(name, impl="reference"), 224)
    assert abs(macs / 1e9 - REFERENCE[name][1]) / REFERENCE[name][1] < 0.03


def test_every_variant_is_registered():
    names = set(timm.list_models("groupmixformer_*"))
    assert {f"groupmixformer_{a}" for a in "mtsbl"} <= names
    assert {"groupmixformer_m_scheme_e8_g4", "groupmixformer_t_scheme_e8_g4"} <= names


def test_structure_of_the_release():
    model = timm.create_model("groupmixformer_t")
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    gmas = [m for m in model.modules() if isinstance(m, GroupMixAttention)]
    assert len(gmas) == 24 and all(m.num_heads == 8 and m.qkv.bias is not None for m in gmas)
    assert [s.downsample.conv.conv_dw.stride[0] for s in model.stages] == [1, 2, 2, 2]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert {m.eps for m in norms} == {1e-6, 1e-5}  # blocks 1e-6, the skip branch's default
    # BatchNorm2d everywhere (DDP training converts it to SyncBatchNorm, not the model).
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert isinstance(model.norm, torch.nn.BatchNorm2d)


def test_scheme_variants():
    with torch.device("meta"):
        model = timm.create_model("groupmixformer_m_scheme_e8_g4")
        dense = timm.create_model("groupmixformer_m")
    mlps = [m for m in model.modules() if isinstance(m, SchemeMlp)]
    assert len(mlps) == 3 + 3 + 12 + 4
    assert all(m.groups == 4 and m.hidden_features == 8 * m.in_features and m.has_cca
               for m in mlps)
    assert not any(isinstance(m, timm.layers.Mlp) for m in model.modules())
    # E=8 in 4 blocks: half the MLP weights of the dense E=4 MLP.
    mlp_params = sum(count_params(m) for m in mlps)
    dense_params = sum(count_params(m) for m in dense.modules() if isinstance(m, timm.layers.Mlp))
    assert abs(mlp_params / dense_params - 0.5) < 0.02


def test_scheme_mlp_trains_and_deploys():
    model = tiny(mlp_ratios=8, mlp_groups=4, cca=True)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    model.eval()
    with torch.no_grad():
        before = model(x)
        report = vitmix.deploy(model)
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert len(report.cca_weights) == 5


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (96, 64), (128, 160)])
def test_any_multiple_of_32_works(size):
    model = tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_registered_model_at_other_sizes():
    model = timm.create_model("groupmixformer_m", num_classes=5).eval()
    with torch.no_grad():
        for size in (64, 96):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 5)


def test_features_only_gives_four_stage_maps():
    model = timm.create_model("groupmixformer_m", features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [40, 80, 160, 160]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 128, 96))
    assert [tuple(f.shape) for f in feats] == [
        (2, 40, 32, 24), (2, 80, 16, 12), (2, 160, 8, 6), (2, 160, 4, 3)]
    picked = timm.create_model("groupmixformer_m", features_only=True, out_indices=(1, 3))
    with torch.no_grad():
        assert [f.shape[1] for f in picked(torch.randn(1, 3, 64, 64))] == [80, 160]


def test_features_equal_forward_features():
    full = timm.create_model("groupmixformer_m").eval()
    feats = timm.create_model("groupmixformer_m", features_only=True).eval()
    # timm's feature wrapper flattens the stages: stages.3 -> stages_3.
    state = {k.replace("stages.", "stages_", 1): v for k, v in full.state_dict().items()
             if not k.startswith(("norm.", "head."))}
    feats.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(feats(x)[-1], full.forward_features(x))


def test_timm_head_conventions():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 80, 2, 2)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 80)
        torch.testing.assert_close(model.forward_head(feats), model.head(pre))
        torch.testing.assert_close(model(x), model.head(pre))
    assert model.get_classifier() is model.head
    model.reset_classifier(3)
    assert model.head.out_features == 3 and model.num_classes == 3
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 80)
    matcher = model.group_matcher()
    assert matcher["stem"] == r"^stem"
    assert isinstance(model.no_weight_decay(), set)
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    model.train()
    model(x).sum().backward()
    assert model.stages[0].blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_timm_keyword_arguments():
    model = timm.create_model("groupmixformer_m", num_classes=7, in_chans=1, drop_rate=0.25,
                              drop_path_rate=0.3, attn="softmax", impl="reference")
    assert model.head.out_features == 7 and model.head_drop.p == 0.25
    assert model.stem.conv1.in_channels == 1
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    # Linear in the block index over the whole network, 0 for the first block.
    assert rates == pytest.approx([0.3 * i / (len(rates) - 1) for i in range(len(rates))])
    assert {(m.attn, m.impl) for m in model.modules() if isinstance(m, GroupMixAttention)} == {
        ("softmax", "reference")}


def test_training_step_and_impls_agree():
    torch.manual_seed(0)
    model = tiny(drop_path_rate=0.1)
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        fast = model(x)
        model.set_attention(impl="reference")
        torch.testing.assert_close(model(x), fast, rtol=1e-5, atol=1e-5)
        model.set_attention(attn="softmax")
        assert not torch.allclose(model(x), fast)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(img_size=100), "img_size 100"),
    (dict(img_size=(64, 48)), r"img_size \(64, 48\)"),
    (dict(dims=(21, 40, 40, 80)), "dim 21"),
    (dict(dims=(20, 40, 45, 80)), "num_heads 8"),
    (dict(dims=(20, 40, 40)), "one entry per stage"),
    (dict(global_pool="max"), "'max'"),
    (dict(num_heads=0), "num_heads must be a positive integer, got 0"),
    (dict(attn="linear"), "attn must be one of 'factorized', 'softmax', got 'linear'"),
    (dict(impl="slow"), "impl must be one of 'fast', 'reference', got 'slow'"),
    (dict(qkv_bias="yes"), "qkv_bias must be True or False, got 'yes'"),
])
def test_bad_construction_raises(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        tiny(**kwargs)


def test_bad_input_raises():
    model = tiny()
    with pytest.raises(ValueError, match="48x64"):
        model(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    feats = timm.create_model("groupmixformer_m", features_only=True)
    with pytest.raises(ValueError, match="40x40"):
        feats(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="attn"):
        model.set_attention(attn="linear")


def test_onnx_export_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny().eval()  # impl="fast": ONNX export records the reference form
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "gmf.onnx"
    with torch.no_grad():
        expected = model(x)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)
