"""vitmix.compress and vitmix.grouping: the grouping search against enumeration, the copy
against a float64 reference, distillation against its formula, and compress on small timm
models of each family."""

import itertools
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

import vitmix
from vitmix.compression import assign_units, block_scores, compress, kept_fractions
from vitmix.compression.distill import Distillation, distillation_loss
from vitmix.compression.spec import check_schemify_spec
from vitmix.grouping import (
    diagonal_membership,
    hidden_index,
    regrouped_channels_bound,
)
from vitmix.layers import SchemeMlp


def best_by_enumeration(score: torch.Tensor, copies: int) -> float:
    """The largest total score over every placement of each unit in ``copies`` distinct groups
    with equal group sizes."""
    units, groups = score.shape
    capacity = units * copies // groups
    best = -math.inf
    for choice in itertools.product(itertools.combinations(range(groups), copies), repeat=units):
        sizes = [0] * groups
        for chosen in choice:
            for g in chosen:
                sizes[g] += 1
        if max(sizes) <= capacity:
            best = max(best, sum(float(score[u, g]) for u, chosen in enumerate(choice)
                                 for g in chosen))
    return best


@pytest.mark.parametrize("units,groups,copies", [(8, 2, 1), (6, 3, 1), (6, 3, 2), (4, 4, 3)])
def test_assign_units_finds_the_best_placement(units, groups, copies):
    gen = torch.Generator().manual_seed(units * 100 + groups * 10 + copies)
    for trial in range(6):
        score = torch.randn(units, groups, generator=gen, dtype=torch.float64)
        if trial % 2:
            score = score.round()  # ties
        member = assign_units(score, copies)
        assert member.sum(dim=1).tolist() == [copies] * units
        assert member.sum(dim=0).tolist() == [units * copies // groups] * groups
        assert float((score * member).sum()) == pytest.approx(
            best_by_enumeration(score, copies), abs=1e-12)


def test_assign_units_refuses_what_cannot_split():
    with pytest.raises(ValueError, match="copies must be 1 to the number of groups 2, got 3"):
        assign_units(torch.zeros(4, 2), copies=3)
    with pytest.raises(ValueError, match="5 units x 1 copies do not split into 2 equal groups"):
        assign_units(torch.zeros(5, 2))


def dense_mlp(d: int, h: int, use_conv: bool = False, seed: int = 0) -> Mlp:
    torch.manual_seed(seed)
    mlp = Mlp(d, h, use_conv=use_conv).double()
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_()
    return mlp


def weights(mlp):
    """(fc1, fc2) weights as (out, in) matrices, of Linear and 1x1-conv MLPs alike."""
    return tuple(fc.weight.detach().reshape(fc.weight.shape[0], -1) for fc in (mlp.fc1, mlp.fc2))


@pytest.mark.parametrize("use_conv", [False, True])
def test_hidden_permutation_keeps_the_function_and_the_copy_is_its_block_diagonal(use_conv):
    """Reordering the hidden units by the grouping leaves the dense MLP's function as it was (to
    float64 precision); the SCHEME MLP compress makes computes that reordered MLP with every
    weight outside the diagonal blocks set to zero."""
    d, h, groups = 8, 16, 4
    mlp = dense_mlp(d, h, use_conv)
    w1, w2 = weights(mlp)
    order = hidden_index(assign_units(block_scores(w1, w2, groups)))
    assert sorted(order.tolist()) == list(range(h))
    x = torch.randn(3, d, 2, 2, dtype=torch.float64) if use_conv else torch.randn(
        3, 5, d, dtype=torch.float64)
    reordered = dense_mlp(d, h, use_conv)
    masked = dense_mlp(d, h, use_conv)
    block = torch.block_diag(*[torch.ones(h // groups, d // groups, dtype=torch.float64)] * groups)
    with torch.no_grad():
        for target in (reordered, masked):
            target.fc1.weight.copy_(w1[order].reshape(target.fc1.weight.shape))
            target.fc1.bias.copy_(mlp.fc1.bias[order])
            target.fc2.weight.copy_(w2[:, order].reshape(target.fc2.weight.shape))
            target.fc2.bias.copy_(mlp.fc2.bias)
        masked.fc1.weight.mul_(block.reshape(masked.fc1.weight.shape))
        masked.fc2.weight.mul_(block.t().reshape(masked.fc2.weight.shape))
        torch.testing.assert_close(reordered(x), mlp(x), rtol=1e-12, atol=1e-12)
        parent = nn.Sequential(mlp)
        compress(parent, groups=groups, measure_macs=False)
        assert isinstance(parent[0], SchemeMlp)
        torch.testing.assert_close(parent(x), masked(x), rtol=1e-12, atol=1e-12)


def test_reported_kept_energy_is_the_best_over_every_grouping():
    d, h, groups = 4, 8, 2
    mlp = dense_mlp(d, h, seed=1)
    w1, w2 = weights(mlp)
    best = max(sum(kept_fractions(w1, w2, _membership_of(first, h)))
               for first in itertools.combinations(range(h), h // groups))
    _, report = compress(nn.Sequential(mlp), groups=groups, channels_bound=True,
                         measure_macs=False)
    (layer,) = report.layers
    assert layer.kept_fc1 + layer.kept_fc2 == pytest.approx(best, abs=1e-12)
    assert layer.diagonal <= layer.kept
    assert layer.kept <= sum(layer.channels_bound) / 2 + 1e-12


def _membership_of(first_group, units):
    member = torch.zeros(units, 2, dtype=torch.bool)
    member[list(first_group), 0] = True
    member[:, 1] = ~member[:, 0]
    return member


def test_wider_scheme_copies_each_unit_into_distinct_groups():
    """E=8 at G=4 from a dense E=4: every dense unit sits in two groups, each copy keeping the
    part of its weights that block reads and writes."""
    d, h, groups = 8, 16, 4
    mlp = dense_mlp(d, h, seed=2)
    w1, w2 = weights(mlp)
    parent = nn.Sequential(mlp)
    _, report = compress(parent, groups=groups, expansion=4, measure_macs=False)
    new = parent[0]
    assert new.hidden_features == 2 * h and report.layers[0].copies == 2
    # Find each SCHEME hidden unit's dense unit from its bias (random normal: all distinct).
    source = [int((mlp.fc1.bias - b).abs().argmin()) for b in new.fc1.bias]
    per_group = 2 * h // groups
    for unit in range(h):
        where = [i // per_group for i, s in enumerate(source) if s == unit]
        assert len(where) == 2 and where[0] != where[1]
    for i, unit in enumerate(source):
        g = i // per_group
        block = slice(g * d // groups, (g + 1) * d // groups)
        torch.testing.assert_close(new.fc1.weight[g, i % per_group], w1[unit, block])
        torch.testing.assert_close(new.fc2.weight[g, :, i % per_group], w2[block, unit])
    with pytest.raises(ValueError, match="hidden width must be 1 to 2 times the dense 16"):
        compress(nn.Sequential(dense_mlp(d, h)), groups=2, expansion=6, measure_macs=False)


def test_diagonal_grouping_is_the_plain_copy():
    d, h = 8, 16
    mlp = dense_mlp(d, h, seed=3)
    w1, w2 = weights(mlp)
    parent = nn.Sequential(mlp)
    _, report = compress(parent, groups=2, grouping="diagonal", measure_macs=False)
    torch.testing.assert_close(parent[0].fc1.weight[1], w1[8:, 4:])
    assert report.layers[0].kept == pytest.approx(report.layers[0].diagonal)
    assert diagonal_membership(4, 2, 2).all()


def test_channel_bound_never_keeps_less_than_the_hidden_search():
    w1, w2 = torch.randn(32, 8, dtype=torch.float64), torch.randn(8, 32, dtype=torch.float64)
    w1[:, ::2] *= 4  # the even channels carry most weight: regrouping them pays
    hidden_only = kept_fractions(w1, w2, assign_units(block_scores(w1, w2, 2)))
    bound = regrouped_channels_bound(w1, w2, 2)
    assert sum(bound) >= sum(hidden_only) - 1e-12
    with pytest.raises(ValueError, match="input and output are one stream"):
        regrouped_channels_bound(torch.randn(8, 4), torch.randn(6, 8), 2)


def test_distillation_loss_is_the_tempered_kl_divergence():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    teacher = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    t = 2.5
    p = torch.softmax(teacher / t, dim=1)
    q = torch.softmax(student / t, dim=1)
    expected = t * t * (p * (p.log() - q.log())).sum() / 5
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(float(expected),
                                                                          rel=1e-6)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([0, 1, 2, 3, 4])
    label_loss = F.cross_entropy(student, labels)
    mix = Distillation(nn.Identity(), weight=0.25, temperature=t)
    assert float(mix(label_loss, student, teacher)) == pytest.approx(
        float(0.75 * label_loss + 0.25 * expected), rel=1e-6)


class ConvNeXtStyle(nn.Module):
    """A depthwise conv and a 1x1-conv MLP on (B, C, H, W) maps, as ConvNeXt's blocks are."""

    def __init__(self, dim=16, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.mlp = Mlp(dim, 4 * dim, use_conv=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mlp(self.dw(x))
        return self.head(x.mean((2, 3)))


SMALL_MODELS = {
    "vit": lambda: timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5),
    "swin": lambda: timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
        window_size=4, num_classes=5),
    "convnext_style": ConvNeXtStyle,
}


@pytest.mark.parametrize("family", SMALL_MODELS)
@pytest.mark.parametrize("groups,expansion", [(2, None), (4, 8)])
def test_compress_small_timm_models(family, groups, expansion):
    torch.manual_seed(0)
    model = SMALL_MODELS[family]().eval()
    n_mlps = sum(isinstance(m, Mlp) for m in model.modules())
    model, report = compress(model, groups=groups, expansion=expansion, img_size=32)
    assert len(report.layers) == len(report.schemify.replaced) == n_mlps > 0
    assert not any(isinstance(m, Mlp) and not isinstance(m, SchemeMlp) for m in model.modules())
    assert report.schemify.macs_after < report.schemify.macs_before
    for layer in report.layers:
        assert 0 < layer.kept <= 1 and layer.kept >= layer.diagonal - 1e-9
    assert "keep" in str(report) and report.as_dict()["layers"][0]["name"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        vitmix.deploy(model)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_compress_with_cca_keeps_the_copied_function():
    """With CCA the mixing weight a starts at 0.98; fc2 is divided by it, so that the eval-mode
    model (a * BD-MLP) computes the plain copy's function."""
    mlp = dense_mlp(8, 16, seed=4)
    plain = nn.Sequential(dense_mlp(8, 16, seed=4))
    compress(plain, groups=2, measure_macs=False)
    with_cca = nn.Sequential(mlp)
    compress(with_cca, groups=2, cca=True, measure_macs=False)
    assert with_cca[0].has_cca and with_cca[0].cca_weight() == pytest.approx(
        1 / (1 + math.exp(4)))
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(with_cca.eval()(x), plain.eval()(x), rtol=1e-12, atol=1e-12)


def test_compress_refuses_bad_arguments_before_changing_anything():
    model = nn.Sequential(dense_mlp(8, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="grouping must be one of"):
        compress(model, grouping="best")
    with pytest.raises(ValueError, match="expansion must be a positive number or None"):
        compress(model, expansion=-1)
    with pytest.raises(ValueError, match="groups=3 does not divide the input width 8"):
        compress(model, groups=3, measure_macs=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[0], Mlp) and not isinstance(model[0], SchemeMlp)


@pytest.mark.parametrize("spec,problem", [
    ({"groups": 10**9}, "groups must be an integer from 1 to 1024"),
    ({"groups": 2, "expansion": True}, "expansion must be None or a number"),
    ({"groups": 2, "pretrained": True}, "takes groups, expansion, cca, cca_schedule"),
    ({"cca": False}, "must name its groups"),
    ([2], "must be a mapping"),
])
def test_schemify_spec_from_a_file_is_checked(spec, problem):
    with pytest.raises(ValueError, match=f"^run.yaml: the SCHEME form \\(schemify\\) {problem}"):
        check_schemify_spec(spec, "run.yaml")
