"""vitmix.accelerate in training: the memory-lean autograd functions against float64 references
and gradcheck, and the accelerated twins against the plain layers they replace."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import Mlp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from references import reference_mlp
from vitmix.accelerate import accelerate, accelerated_modules, restore, set_enabled, training
from vitmix.layers import SchemeMlp

F64 = torch.float64


# ---- float64 references, written the slow and obvious way ------------------------------------


def reference_cca_mix(tokens: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """y + weight * X softmax(scale X^T X)^T, one sample at a time, in float64."""
    out = []
    for x, yb in zip(tokens.double(), y.double(), strict=True):
        logits = scale * (x.t() @ x)
        attn = torch.exp(logits - logits.max(-1, keepdim=True).values)
        attn = attn / attn.sum(-1, keepdim=True)
        out.append(yb + weight.double() * (x @ attn.t()))
    return torch.stack(out)


def block_weights(groups: int, cin: int, hidden: int, cout: int, bias: bool, dtype=F64):
    torch.manual_seed(0)
    w1 = torch.randn(groups, hidden, cin, dtype=dtype, requires_grad=True)
    w2 = torch.randn(groups, cout, hidden, dtype=dtype, requires_grad=True)
    b1 = torch.randn(groups * hidden, dtype=dtype, requires_grad=True) if bias else None
    b2 = torch.randn(groups * cout, dtype=dtype, requires_grad=True) if bias else None
    return w1, b1, w2, b2


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few rows and samples, so every loop runs several times with a short tail."""
    monkeypatch.setattr(training, "TRAIN_CHUNK_BYTES", 5 * 8 * 8)   # 64 rows minimum
    monkeypatch.setattr(training, "_hidden_chunk_rows", lambda hidden, size: 8)
    monkeypatch.setattr(training, "CCA_CHUNK_BYTES", 2 * 8 * 8 * 4)


ACTIVATIONS = [nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU(), nn.SiLU(), nn.Hardswish(),
               nn.Identity()]


# ---- the block-diagonal MLP function --------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: repr(a))
def test_mlp_function_gradcheck_and_float64_forward(small_chunks, groups, act):
    rule = training.activation_rule(act)
    x = torch.randn(37, 4 * groups, dtype=F64, requires_grad=True)
    w1, b1, w2, b2 = block_weights(groups, 4, 5, 3, bias=True)
    fn = lambda *a: training.block_diagonal_mlp(*a, act=rule)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w1, b1, w2, b2))
    mlp = SchemeMlp(4 * groups, 5 * groups, 3 * groups, groups=groups, cca=False).double()
    with torch.no_grad():
        for layer, w, b in ((mlp.fc1, w1, b1), (mlp.fc2, w2, b2)):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    torch.testing.assert_close(fn(x, w1, b1, w2, b2), reference_mlp(mlp, x.detach(), act))


@pytest.mark.parametrize("store_hidden", [False, True])
def test_mlp_function_without_biases_and_with_stored_hidden(small_chunks, store_hidden):
    x = torch.randn(21, 6, dtype=F64, requires_grad=True)
    w1, _, w2, _ = block_weights(2, 3, 4, 3, bias=False)
    rule = training.activation_rule(nn.GELU())
    def fn(rows, fc1, fc2):
        return training.block_diagonal_mlp(rows, fc1, None, fc2, None, rule,
                                           store_hidden=store_hidden)

    assert torch.autograd.gradcheck(fn, (x, w1, w2))


def test_mlp_function_dropout_replays_its_masks_in_backward(small_chunks):
    x = torch.randn(40, 6, dtype=F64, requires_grad=True)
    w1, b1, w2, b2 = block_weights(2, 3, 8, 3, bias=True)
    rule = training.activation_rule(nn.GELU())

    def fn(*args):
        torch.manual_seed(7)  # the same masks on every call gradcheck makes
        return training.block_diagonal_mlp(*args, act=rule, drop=0.4)

    assert torch.autograd.gradcheck(fn, (x, w1, b1, w2, b2))
    no_drop = training.block_diagonal_mlp(x, w1, b1, w2, b2, rule)
    assert not torch.allclose(fn(x, w1, b1, w2, b2), no_drop)
    # Forward draws as many numbers as the masks need, and backward leaves the stream alone.
    torch.manual_seed(3)
    fn_out = training.block_diagonal_mlp(x, w1, b1, w2, b2, rule, drop=0.4)
    after_forward = torch.get_rng_state()
    fn_out.sum().backward()
    assert torch.equal(torch.get_rng_state(), after_forward)


def test_activation_with_parameters_is_not_taken():
    assert training.activation_rule(nn.PReLU()) is None


# ---- CCA and the mixing ---------------------------------------------------------------------


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("tokens_per_sample", [3, 6])
@pytest.mark.parametrize("per_channel", [False, True])
def test_covariance_mix_gradcheck_and_float64_formula(small_chunks, monkeypatch, per_sample,
                                                      tokens_per_sample, per_channel):
    monkeypatch.setattr(training, "CCA_PER_SAMPLE_MIN_MACS", 1 if per_sample else 10**12)
    tokens = torch.randn(5, tokens_per_sample, 4, dtype=F64, requires_grad=True)
    y = torch.randn(5, tokens_per_sample, 4, dtype=F64, requires_grad=True)
    weight = (torch.rand(4, dtype=F64) if per_channel else torch.tensor(0.3, dtype=F64))
    weight.requires_grad_()
    fn = lambda t, yy, w: training.covariance_mix(t, yy, w, 0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (tokens, y, weight))
    torch.testing.assert_close(fn(tokens, y, weight),
                               reference_cca_mix(tokens.detach(), y.detach(), weight, 0.7))


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("tokens_per_sample", [3, 20])  # fewer and more tokens than channels
def test_covariance_mix_in_float32_through_onednn(monkeypatch, per_sample, tokens_per_sample):
    monkeypatch.setattr(training, "CCA_PER_SAMPLE_MIN_MACS", 1 if per_sample else 10**12)
    torch.manual_seed(0)
    tokens = torch.randn(3, tokens_per_sample, 16, requires_grad=True)
    y = torch.randn(3, tokens_per_sample, 16, requires_grad=True)
    weight = torch.tensor(0.6, requires_grad=True)
    grad = torch.randn(3, tokens_per_sample, 16)
    got = training.covariance_mix(tokens, y, weight, 0.25)
    got.backward(grad)
    leaves = [t.detach().double().requires_grad_() for t in (tokens, y, weight)]
    want = reference_cca_mix(*leaves, 0.25)
    want.backward(grad.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for got_leaf, want_leaf in zip((tokens, y, weight), leaves, strict=True):
        torch.testing.assert_close(got_leaf.grad.double(), want_leaf.grad, rtol=1e-4, atol=1e-4)


# ---- products, linear layers ---------------------------------------------------------------


def test_matmul_t_reads_strided_operands_and_fuses_activation_and_addition():
    rows = torch.randn(30, 12)
    a = rows[:, 4:8]                       # a column slice, as the groups are
    gelu = training.activation_rule(nn.GELU())
    w2 = torch.randn(8, 4)
    want = torch.nn.functional.gelu(a.double() @ w2.double().t())
    torch.testing.assert_close(training.matmul_t(a, w2, act=gelu).double(), want, rtol=1e-5,
                               atol=1e-5)
    add = torch.randn(30, 8)
    torch.testing.assert_close(training.matmul_t(a, w2, add=add).double(),
                               a.double() @ w2.double().t() + add.double(), rtol=1e-5, atol=1e-5)
    grad_rows = torch.randn(30, 6)  # transposed operands, as the weight gradients take them
    torch.testing.assert_close(training.matmul_t(a.t(), grad_rows.t()).double(),
                               a.double().t() @ grad_rows.double(), rtol=1e-5, atol=1e-5)
    w_t = torch.randn(4, 8).t()
    torch.testing.assert_close(training.matmul_t(a, w_t).double(),
                               a.double() @ w_t.double().t(), rtol=1e-5, atol=1e-5)


def test_linear_function_gradcheck_and_float32():
    x = torch.randn(3, 5, 6, dtype=F64, requires_grad=True)
    w = torch.randn(4, 6, dtype=F64, requires_grad=True)
    b = torch.randn(4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(training.linear, (x, w, b))
    assert torch.autograd.gradcheck(lambda xx, ww: training.linear(xx, ww, None), (x, w))
    x32 = x.detach().float()
    torch.testing.assert_close(training.linear(x32, w.detach().float(), b.detach().float())
                               .double(), x.detach() @ w.detach().t() + b.detach(), rtol=1e-5,
                               atol=1e-5)


# ---- the twins against the plain modules ------------------------------------------------------


def _step(module: nn.Module, x: torch.Tensor, seed: int = 5):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = module(x)
    # A fixed random projection: a constant one would cancel in the BatchNorms' backward.
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    grads = {"input": x.grad}
    grads.update({n: p.grad for n, p in module.named_parameters() if p.grad is not None})
    return out.detach(), grads


def assert_same_training_step(plain: nn.Module, x: torch.Tensor, rtol=1e-4, atol=1e-5,
                              **accelerate_kwargs):
    lean = accelerate(copy.deepcopy(plain), **accelerate_kwargs)
    want_out, want = _step(plain, x)
    got_out, got = _step(lean, x)
    torch.testing.assert_close(got_out, want_out, rtol=rtol, atol=atol)
    assert got.keys() == want.keys()
    # Each gradient against its own scale, or a hundredth of the largest where it is near zero
    # (the pooling mixer's pool(x) - x leaves norm1's bias almost no gradient).
    largest = max(g.abs().max() for g in want.values())
    for name in want:
        scale = torch.maximum(want[name].abs().max(), largest / 100)
        torch.testing.assert_close(got[name] / scale, want[name] / scale, rtol=rtol, atol=atol,
                                   msg=name)
    return got_out


@pytest.fixture
def lean_calls(monkeypatch) -> list:
    calls = []
    for name in ("block_diagonal_mlp", "covariance_mix", "linear"):
        original = getattr(training, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(training, name, spy)
    return calls


LAYOUTS = [
    ("tokens", False, (3, 11, 24)),
    ("one_token_per_sample", False, (3, 24)),
    ("lone_token", False, (24,)),
    ("maps", True, (2, 24, 5, 3)),
    ("maps_channels_last", True, (2, 24, 5, 3)),
]


@pytest.mark.parametrize("schedule", ["learned", "cosine", None])
@pytest.mark.parametrize("layout,channels_first,shape", LAYOUTS, ids=[lay[0] for lay in LAYOUTS])
def test_scheme_mlp_twin_trains_as_the_plain_module(lean_calls, schedule, layout,
                                                    channels_first, shape):
    torch.manual_seed(0)
    mlp = SchemeMlp(24, 192, groups=4, cca=schedule is not None,
                    cca_schedule=schedule or "learned", channels_first=channels_first).train()
    if schedule == "cosine":
        mlp.set_progress(0.3)
    x = torch.randn(*shape)
    if layout == "maps_channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    out = assert_same_training_step(mlp, x)
    assert out.stride() == mlp(x).stride()  # the same memory layout as the plain path
    expected = ["block_diagonal_mlp"] + (["covariance_mix"] if schedule else [])
    assert lean_calls == expected


def test_scheme_mlp_twin_with_dropout_draws_fresh_masks_and_backpropagates_through_them():
    torch.manual_seed(0)
    mlp = accelerate(SchemeMlp(4, 8, groups=2, drop=0.5).double().train())
    x = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)

    def fn(inp):
        torch.manual_seed(11)
        return mlp(inp)

    assert torch.autograd.gradcheck(fn, (x,))
    assert not torch.equal(mlp(x), mlp(x))  # new masks each step
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))


@pytest.mark.parametrize("use_conv,lean_conv_mlp", [(False, False), (True, False),
                                                     (True, True)])
def test_timm_mlp_twin_trains_as_timm_mlp(lean_calls, use_conv, lean_conv_mlp):
    torch.manual_seed(0)
    mlp = Mlp(16, 64, use_conv=use_conv).train()
    x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last) if use_conv \
        else torch.randn(2, 9, 16)
    assert_same_training_step(mlp, x, lean_conv_mlp=lean_conv_mlp)
    # On maps the lean functions run only when asked for: oneDNN's convolutions were faster.
    assert lean_calls == ([] if use_conv and not lean_conv_mlp else ["block_diagonal_mlp"])


def test_plain_path_where_the_functions_do_not_apply(lean_calls):
    x = torch.randn(2, 5, 8)
    with_norm = SchemeMlp(8, 16, groups=2, norm_layer=nn.LayerNorm).train()
    prelu = SchemeMlp(8, 16, groups=2, act_layer=nn.PReLU).train()
    for mlp in (with_norm, prelu):
        assert_same_training_step(mlp, x)
    assert lean_calls == []
    lean = accelerate(SchemeMlp(8, 16, groups=2).train())
    with torch.no_grad():  # nothing to save for backward
        lean(x)
    set_enabled(False)
    try:
        lean(x).sum().backward()
    finally:
        set_enabled(None)
    with FlopCounterMode(display=False):
        lean(x).sum().backward()
    assert lean_calls == []
    lean(x).sum().backward()
    assert lean_calls == ["block_diagonal_mlp", "covariance_mix"]


def test_lean_training_false_keeps_the_inference_kernels_and_trains_plainly(lean_calls):
    torch.manual_seed(0)
    model = timm.create_model("schemeformer_ppaa_t_e8_g2", img_size=32, num_classes=4)
    plain = copy.deepcopy(model)
    accelerate(model, lean_training=False)
    assert accelerated_modules(model)  # the twins are there, for evaluation
    x = torch.randn(2, 3, 32, 32)
    model.train()(x).sum().backward()
    assert lean_calls == []
    plain.train()(x).sum().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert all("lean_training" not in vars(m) for m in restore(model).modules())
    with pytest.raises(TypeError, match="lean_training must be True or False, got 1"):
        accelerate(model, lean_training=1)


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(saved.values())


def test_lean_path_keeps_no_hidden_activation_unless_asked():
    torch.manual_seed(0)
    mlp = SchemeMlp(32, 256, groups=4).train()
    x = torch.randn(4, 64, 32, requires_grad=True)
    hidden_bytes = 4 * 64 * 256 * 4
    plain = _saved_bytes(mlp, x)
    assert plain > 2 * hidden_bytes  # the hidden activation before and after GELU
    lean = _saved_bytes(accelerate(copy.deepcopy(mlp)), x)
    # The input and fc2's weight and bias times a (the mixing weight folded in), a and 1 - a:
    # nothing E times wider.
    lean_expected = (x.numel() + mlp.fc2.weight.numel() + mlp.fc2.bias.numel() + 2) * 4
    assert lean == lean_expected
    stored = _saved_bytes(accelerate(copy.deepcopy(mlp), store_hidden=True), x)
    assert stored == lean_expected + hidden_bytes
    stored_model = accelerate(copy.deepcopy(mlp), store_hidden=True)
    assert_same_training_step(stored_model, x.detach())
    assert "store_hidden" not in vars(restore(stored_model))


def test_bfloat16_autocast_matches_the_plain_autocast_path():
    torch.manual_seed(0)
    mlp = SchemeMlp(32, 128, groups=2).train()
    lean = accelerate(copy.deepcopy(mlp))
    x = torch.randn(2, 16, 32)
    results = []
    for module in (mlp, lean):
        inp = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(inp)
        out.float().square().mean().backward()
        results.append((out, inp.grad, module.fc1.weight.grad, module.mix_logits.grad))
    (want, *want_grads), (got, *got_grads) = results
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)
    for g_got, g_want in zip(got_grads, want_grads, strict=True):
        assert g_got.dtype == g_want.dtype
        scale = g_want.abs().max()
        torch.testing.assert_close(g_got / scale, g_want / scale, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("name", ["metaformer_ppaa_t", "schemeformer_ppaa_t_e8_g2",
                                  "groupmixformer_t_scheme_e8_g4"])
def test_whole_models_train_as_the_plain_models(lean_calls, name):
    torch.manual_seed(0)
    kwargs = dict(depths=(1, 1, 1, 1)) if name.startswith("groupmix") else {}
    model = timm.create_model(name, num_classes=5, img_size=32, **kwargs).train()
    with torch.no_grad():  # LayerScale's 1e-5 start would hide the blocks' branches
        for pname, p in model.named_parameters():
            if pname.endswith("gamma"):
                p.normal_()
    # In float64, where the functions' chunking, recomputation and gradients are checked without
    # float32 rounding, which through a whole model's BatchNorms grows to about 1e-4.
    x = torch.randn(2, 3, 32, 32, dtype=F64).contiguous(memory_format=torch.channels_last)
    model = model.double().to(memory_format=torch.channels_last)
    assert_same_training_step(model, x, rtol=1e-9, atol=1e-9)
    assert "linear" in lean_calls  # the attention stages
    assert ("block_diagonal_mlp" in lean_calls) == (name != "metaformer_ppaa_t")
    lean_calls.clear()  # the dense MLPs on maps, when asked to train through the functions
    assert_same_training_step(model, x, rtol=1e-9, atol=1e-9, lean_conv_mlp=True)
    assert "block_diagonal_mlp" in lean_calls


def _metaformer_block(token_mixer: str, groups: int, cca: bool) -> nn.Module:
    from vitmix.models.vitmix_metaformer import MetaFormerBlock
    torch.manual_seed(0)
    block = MetaFormerBlock(16, token_mixer, mlp_ratio=4, mlp_groups=groups, cca=cca,
                            cca_schedule="learned", drop=0.0, drop_path=0.0,
                            layer_scale_init=1e-5, head_dim=8)
    with torch.no_grad():  # layer scales far from 1e-5, so that every branch shows
        for name, p in block.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.randn_like(p))
    return block.train()


@pytest.mark.parametrize("token_mixer", ["pool", "attn"])
@pytest.mark.parametrize("groups,cca", [(1, False), (4, True)])
def test_metaformer_block_folds_its_mlp_layer_scale_in_training(lean_calls, token_mixer, groups,
                                                                 cca):
    block = _metaformer_block(token_mixer, groups, cca).double()
    x = torch.randn(2, 16, 4, 6, dtype=F64).contiguous(memory_format=torch.channels_last)
    assert_same_training_step(block, x, rtol=1e-9, atol=1e-9, lean_conv_mlp=True)
    assert "block_diagonal_mlp" in lean_calls
    # ls2 no longer keeps the MLP branch's output for its gradient.
    x32 = x.float().requires_grad_()
    plain, lean = block.float(), accelerate(copy.deepcopy(block.float()), lean_conv_mlp=True)
    assert _saved_bytes(lean, x32) < _saved_bytes(plain, x32) - x32.numel() * 4


def test_metaformer_block_with_an_mlp_the_functions_cannot_take_trains_plainly(lean_calls):
    block = _metaformer_block("pool", 2, True)
    block.mlp.act = nn.PReLU()
    x = torch.randn(2, 16, 4, 4)
    assert_same_training_step(block, x)
    assert lean_calls == []


# ---- CUDA: the same functions through F.linear and batched products ---------------------------

def cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(),
                                               reason="no CUDA device here")(test))


@cuda
def test_functions_on_cuda_gradcheck_in_float64(small_chunks):
    dev = torch.device("cuda")
    rule = training.activation_rule(nn.GELU())
    x = torch.randn(19, 6, dtype=F64, device=dev, requires_grad=True)
    w1, b1, w2, b2 = (t.detach().to(dev).requires_grad_()
                      for t in block_weights(2, 3, 4, 3, bias=True))

    def mlp(*args):
        torch.manual_seed(2)
        return training.block_diagonal_mlp(*args, act=rule, drop=0.3)

    assert torch.autograd.gradcheck(mlp, (x, w1, b1, w2, b2))
    tokens = torch.randn(4, 3, 5, dtype=F64, device=dev, requires_grad=True)
    y = torch.randn(4, 3, 5, dtype=F64, device=dev, requires_grad=True)
    weight = torch.rand(5, dtype=F64, device=dev, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, yy, w: training.covariance_mix(t, yy, w, 0.4),
                                    (tokens, y, weight))


@cuda
@pytest.mark.parametrize("name", ["metaformer_ppaa_t", "schemeformer_ppaa_t_e8_g2"])
def test_models_train_on_cuda_with_bfloat16_autocast_as_the_plain_models(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, img_size=32).cuda().train()
    lean = accelerate(copy.deepcopy(model))
    x = torch.randn(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    results = []
    for module in (model, lean):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module(x)
        out.float().square().mean().backward()
        results.append((out.float(), {n: p.grad for n, p in module.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)
    largest = max(g.abs().max() for g in want_grads.values())
    for name_, grad in want_grads.items():
        scale = torch.maximum(grad.abs().max(), largest / 100)
        torch.testing.assert_close(got_grads[name_] / scale, grad / scale, rtol=5e-2, atol=5e-2,
                                   msg=name_)
