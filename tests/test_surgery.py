"""schemify() on timm models, and deploy()."""

import pytest
import timm
import torch
from timm.layers import Mlp

import vitmix
from vitmix.layers import SchemeMlp
from vitmix.surgery import block_assignment

# Small members of each family the issue names, at a small input where the model allows it.
TIMM_MODELS = [
    ("vit_tiny_patch16_224", dict(img_size=64), 64),
    ("deit_tiny_patch16_224", dict(img_size=64), 64),
    ("swin_tiny_patch4_window7_224", dict(img_size=112, window_size=7), 112),
    ("poolformer_s12", {}, 64),
    ("caformer_s18", {}, 64),
    ("convformer_s18", {}, 64),
]


def count_mlps(model):
    return sum(isinstance(m, Mlp) and not isinstance(m, SchemeMlp) for m in model.modules())


@pytest.mark.parametrize("name,kwargs,size", TIMM_MODELS)
@pytest.mark.parametrize("init_from_dense", [False, True])
def test_schemify_timm_models(name, kwargs, size, init_from_dense):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    n_mlps = count_mlps(model)
    model, report = vitmix.schemify(model, groups=4, init_from_dense=init_from_dense,
                                    img_size=size)
    assert len(report.replaced) == n_mlps > 0
    assert count_mlps(model) == 0
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    x = torch.randn(2, 3, size, size)
    model.train()
    model(x).sum().backward()
    for m in model.modules():
        if isinstance(m, SchemeMlp):
            assert m.fc1.weight.grad is not None and m.mix_logits.grad is not None
    model.eval()
    with torch.no_grad():
        expected = model(x)
        vitmix.deploy(model)
        assert (model(x) - expected).abs().max() < 1e-5


def test_schemify_expansion_sets_hidden_width():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    model, report = vitmix.schemify(model, expansion=8, groups=4, measure_macs=False)
    mlps = [m for m in model.modules() if isinstance(m, SchemeMlp)]
    assert all(m.hidden_features == 8 * 192 and m.groups == 4 for m in mlps)
    assert report.macs_before is None


def test_one_group_copy_of_dense_weights_keeps_the_function():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    vitmix.schemify(model, groups=1, cca=False, init_from_dense=True, measure_macs=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_conv", [False, True])
def test_init_from_dense_recovers_hidden_permuted_block_diagonal_mlp(use_conv):
    """A dense MLP that is block diagonal up to an order of its hidden units is kept exactly."""
    torch.manual_seed(0)
    groups, d, h = 4, 16, 32
    w1 = torch.block_diag(*[torch.randn(h // groups, d // groups) for _ in range(groups)])
    w2 = torch.block_diag(*[torch.randn(d // groups, h // groups) for _ in range(groups)])
    perm = torch.randperm(h)
    parent = torch.nn.Sequential(Mlp(d, h, use_conv=use_conv))
    shape1, shape2 = parent[0].fc1.weight.shape, parent[0].fc2.weight.shape
    with torch.no_grad():
        parent[0].fc1.weight.copy_(w1[perm].reshape(shape1))
        parent[0].fc2.weight.copy_(w2[:, perm].reshape(shape2))
    x = torch.randn(2, d, 3, 3) if use_conv else torch.randn(2, 5, d)
    with torch.no_grad():
        expected = parent(x)
    vitmix.schemify(parent, groups=groups, cca=False, init_from_dense=True, measure_macs=False)
    assert isinstance(parent[0], SchemeMlp) and parent[0].channels_first == use_conv
    with torch.no_grad():
        torch.testing.assert_close(parent(x), expected, atol=1e-5, rtol=1e-5)


def test_block_assignment_keeps_more_weight_than_the_naive_diagonal():
    torch.manual_seed(0)
    w1, w2 = torch.randn(64, 16), torch.randn(16, 64)
    w1[:, :4] *= 3  # hidden units prefer the first input group, whatever their index

    def kept(order):
        a, b = w1[order], w2[:, order]
        return sum(a[g * 16:(g + 1) * 16, g * 4:(g + 1) * 4].square().sum()
                   + b[g * 4:(g + 1) * 4, g * 16:(g + 1) * 16].square().sum() for g in range(4))

    perm = block_assignment(w1, w2, 4)
    assert sorted(perm.tolist()) == list(range(64))
    assert kept(perm) > kept(torch.arange(64))


def test_schemify_errors_leave_the_model_unchanged():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="groups=5 does not divide the input width 192 of blocks"):
        vitmix.schemify(model, groups=5, measure_macs=False)
    with pytest.raises(ValueError, match="hidden width must stay 768 in blocks.0.mlp"):
        vitmix.schemify(model, expansion=8, init_from_dense=True, measure_macs=False)
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        vitmix.schemify(model, groups=0)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_deploy_on_model_without_scheme_is_a_no_op():
    model = timm.create_model("metaformer_ppaa_t", img_size=32)
    report = vitmix.deploy(model)
    assert report.cca_weights == {} and report.max_cca_weight == 0.0
    assert not model.training


def test_deploy_reports_cosine_weights_after_training_end():
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", img_size=32, cca_schedule="cosine")
    for m in model.modules():
        if isinstance(m, SchemeMlp):
            m.set_progress(1.0)
    report = vitmix.deploy(model)
    assert report.max_cca_weight == 0.0 and len(report.cca_weights) == 10
