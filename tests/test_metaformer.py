"""MetaFormer / SCHEMEformer: registration, the reference table, shapes, features and errors."""

import pytest
import timm
import torch

import vitmix  # noqa: F401  (registers the models)
from vitmix.complexity import count_macs, count_params
from vitmix.layers import SchemeMlp
from vitmix.models.vitmix_metaformer import pos_embed_for

# (model, params in millions, MACs at 224 in G), from the reference table.
REFERENCE = [
    ("metaformer_ppaa_s12", 16.54, 2.56),
    ("schemeformer_ppaa_s12_e4_g2", 11.82, 1.77),
    ("schemeformer_ppaa_s12_e8_g2", 16.55, 2.56),
    ("schemeformer_ppaa_s12_e8_g4", 11.83, 1.77),
    ("schemeformer_ppaa_s12_e8_g4_shuffle", 11.83, 1.77),
    ("schemeformer_ppaa_s12_e8_g8", 9.47, 1.37),
    ("schemeformer_ppaa_s12_e16_g8", 11.86, 1.77),
    ("metaformer_ppaa_s24", 30.57, 4.89),
    ("schemeformer_ppaa_s24_e8_g4", 21.16, 3.31),
    ("metaformer_ppaa_s36", 44.60, 7.21),
    ("schemeformer_ppaa_s36_e8_g4", 30.48, 4.84),
]


@pytest.mark.parametrize("name,params_m,macs_g", REFERENCE)
def test_params_and_macs_match_reference(name, params_m, macs_g):
    model = timm.create_model(name)
    params = count_params(model)
    # The CCA mixing logits (two per block) are training-only and not in the authors' count.
    assert abs(params / 1e6 - params_m) / params_m < 0.01
    macs = count_macs(model, 224)
    assert abs(macs / 1e9 - macs_g) / macs_g < 0.03


def test_every_variant_is_registered():
    names = set(timm.list_models("metaformer_ppaa_*")) | set(timm.list_models("schemeformer_*"))
    for arch in ("t", "s12", "s24", "s36"):
        assert f"metaformer_ppaa_{arch}" in names
        for e, g in ((4, 2), (8, 2), (8, 4), (8, 8), (16, 8)):
            assert f"schemeformer_ppaa_{arch}_e{e}_g{g}" in names


def test_scheme_variant_structure():
    model = timm.create_model("schemeformer_ppaa_s12_e8_g4")
    mlps = [m for m in model.modules() if isinstance(m, SchemeMlp)]
    assert len(mlps) == 12
    assert all(m.groups == 4 and m.hidden_features == 8 * m.in_features for m in mlps)
    assert all(m.has_cca for m in mlps)
    dense = timm.create_model("metaformer_ppaa_s12")
    assert not any(isinstance(m, SchemeMlp) for m in dense.modules())


def test_shuffle_variant_has_the_authors_shapes_and_shuffles():
    model = timm.create_model("schemeformer_ppaa_s12_e8_g4_shuffle", device="meta")
    plain = timm.create_model("schemeformer_ppaa_s12_e8_g4", device="meta")
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()}
    # The release's shufflegrouporgattnmlpformer_ppaa_s12_224 has 11,830,336 parameters (its
    # mixing logits, weight_soft, included).
    assert count_params(model) == 11_830_336
    mlps = [m for m in model.modules() if isinstance(m, SchemeMlp)]
    assert len(mlps) == 12 and all(m.channel_shuffle and m.shuffles for m in mlps)
    assert not any(m.channel_shuffle for m in plain.modules() if isinstance(m, SchemeMlp))


@pytest.mark.parametrize("name", ["schemeformer_ppaa_t_e8_g4", "groupmixformer_m_scheme_e8_g4"])
def test_channel_shuffle_is_a_model_argument(name):
    model = timm.create_model(name, channel_shuffle=True, device="meta")
    assert all(m.channel_shuffle for m in model.modules() if isinstance(m, SchemeMlp))
    with pytest.raises(ValueError, match="channel_shuffle must be True or False, got 'yes'"):
        timm.create_model(name, channel_shuffle="yes", device="meta")


@pytest.mark.parametrize("img_size", [32, 64, 96, 224])
def test_any_multiple_of_32_works(img_size):
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, img_size, img_size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_non_square_input_and_in_chans():
    model = timm.create_model("metaformer_ppaa_t", num_classes=3, in_chans=1, img_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 96)).shape == (1, 3)


def test_timm_keyword_arguments_are_honoured():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", num_classes=5, drop_rate=0.3,
                              drop_path_rate=0.2, img_size=32, in_chans=1)
    assert model.head.out_features == 5 and model.head_drop.p == 0.3
    drop_paths = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert max(drop_paths) == pytest.approx(0.2)
    assert model.stages[2].pos_embed.shape == (1, 128, 2, 2)
    assert model.stages[0].downsample.in_channels == 1


def test_layer_scale_and_drop_path_schedule():
    # timm 1.0.21's LayerScale2d ignored init_values (gamma started at 1): the floor is 1.0.22.
    model = timm.create_model("metaformer_ppaa_t", img_size=32, layer_scale_init=1e-3,
                              drop_path_rate=0.3)
    blocks = [b for stage in model.stages for b in stage.blocks]
    for b in blocks:
        for ls in (b.ls1, b.ls2):
            torch.testing.assert_close(ls.gamma, torch.full_like(ls.gamma, 1e-3), rtol=0, atol=0)
    assert "stages.0.blocks.0.ls1.gamma" in model.state_dict()
    # Linear in the block index over the whole network, 0 for the first block.
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in blocks]
    expected = [0.3 * i / (len(blocks) - 1) for i in range(len(blocks))]
    assert rates == pytest.approx(expected)
    assert [getattr(b.drop_path2, "drop_prob", 0.0) for b in blocks] == rates


def test_position_embedding_is_resized_for_other_sizes():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", img_size=64)
    stage = model.stages[2]
    assert stage.pos_embed.shape[-2:] == (4, 4)
    assert pos_embed_for(stage.pos_embed, torch.zeros(1, 128, 4, 4)) is stage.pos_embed
    assert pos_embed_for(stage.pos_embed, torch.zeros(1, 128, 2, 3)).shape == (1, 128, 2, 3)


def test_features_only_returns_four_stage_maps():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", features_only=True)
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 64, 128, 256]
    assert [64 // f.shape[-1] for f in feats] == [4, 8, 16, 32]
    assert model.feature_info.reduction() == [4, 8, 16, 32]


def test_forward_head_pre_logits_and_reset_classifier():
    model = timm.create_model("metaformer_ppaa_t", img_size=32).eval()
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)
    model.reset_classifier(4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_training_step_reaches_every_parameter():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", num_classes=4, img_size=32).train()
    model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_deploy_equals_eval_output_and_drops_cca():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", num_classes=10, img_size=32)
    with torch.no_grad():  # make layer scale large enough that the MLP branch matters
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    report = vitmix.deploy(model)
    assert len(report.cca_weights) == 10
    assert 0 < report.max_cca_weight < 1
    assert not any("mix_logits" in n for n in model.state_dict())
    assert report.params_before - report.params_after == 2 * 10
    with torch.no_grad():
        assert (model(x) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("img_size", [30, 48, 0])
def test_unsupported_img_size_is_rejected_at_construction(img_size):
    with pytest.raises(ValueError, match=f"img_size {img_size} is not supported"):
        timm.create_model("schemeformer_ppaa_t_e8_g4", img_size=img_size)


def test_unsupported_input_is_rejected_before_any_work():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", img_size=32)
    with pytest.raises(ValueError, match="input size 40x32 is not supported"):
        model(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))


def test_groups_that_do_not_divide_the_width_are_rejected():
    with pytest.raises(ValueError, match="in_features=64 is not divisible by groups=3"):
        timm.create_model("schemeformer_ppaa_s12_e8_g4", mlp_groups=3)


def test_weights_load_through_timm_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    # 1000 classes, as in the pretrained cfg: timm drops a classifier of another size on load.
    source = timm.create_model("schemeformer_ppaa_t_e8_g4", img_size=32)
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(path))
    x = torch.randn(1, 3, 32, 32)
    for kwargs in (dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path))),
                   dict(checkpoint_path=str(path))):
        loaded = timm.create_model("schemeformer_ppaa_t_e8_g4", img_size=32, **kwargs)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(x), source.eval()(x))


def test_features_only_rejects_bad_input_too():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", features_only=True)
    with pytest.raises(ValueError, match="input size 64x40 is not supported"):
        model(torch.randn(1, 3, 64, 40))


@pytest.mark.parametrize("kwargs,message", [
    (dict(token_mixers=("pool", "conv", "attn", "attn")),
     r"token_mixers\[1\] must be one of 'attn', 'identity', 'pool', 'sepconv', got 'conv'"),
    (dict(token_mixers=("pool", "attn")), "token_mixers needs one value or one entry per stage"),
    (dict(pos_embed_stage=4), "pos_embed_stage must be None or a stage index from 0 to 3, got 4"),
    (dict(pos_embed_stage=True), "pos_embed_stage must be None or a stage index"),
    (dict(head_dim=0), "head_dim must be a positive integer, got 0"),
    (dict(layer_scale_init="1e-5"), "layer_scale_init must be a number, got '1e-5'"),
])
def test_bad_metaformer_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("metaformer_ppaa_t", **kwargs)


def test_one_token_mixer_for_every_stage():
    model = timm.create_model("metaformer_ppaa_t", token_mixers="pool", pos_embed_stage=None)
    assert {type(b.token_mixer).__name__ for s in model.stages for b in s.blocks} == {"Pooling"}
