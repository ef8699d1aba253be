"""torch.compile on the vitmix models, in training and in deployed form, against eager mode.

The fast tests trace whole graphs (fullgraph=True: no graph break anywhere) with the
aot_eager backend, which runs the traced forward and backward graphs without code
generation; the slow test also generates code with inductor, the default backend.
"""

import copy

import pytest
import timm
import torch

import vitmix

MODEL = "schemeformer_ppaa_t_e8_g4"


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(MODEL, img_size=32, num_classes=10)
    with torch.no_grad():
        # LayerScale starts at 1e-5, which would hide any error in the blocks' branches.
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.normal_()
    return model


def train_step(model, params: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    params.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in params.named_parameters()}


def check_train_and_deployed(backend: str, accelerated: bool = False) -> None:
    eager = tiny_model().train()
    if accelerated:  # eager trains through the lean functions, the compiled copy plainly
        vitmix.accelerate(eager)
    compiled_src = copy.deepcopy(eager)
    compiled = torch.compile(compiled_src, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 32, 32)

    want_out, want_grads = train_step(eager, eager, x)
    got_out, got_grads = train_step(compiled, compiled_src, x)
    torch.testing.assert_close(got_out, want_out, rtol=1e-4, atol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)

    vitmix.deploy(eager)
    deployed = torch.compile(copy.deepcopy(eager), backend=backend, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), eager(x), rtol=1e-4, atol=1e-5)


def test_compile_traces_whole_graph_in_training_and_deployed():
    check_train_and_deployed("aot_eager")


def test_compile_traces_an_accelerated_model_whole_and_matches_its_eager_lean_path():
    check_train_and_deployed("aot_eager", accelerated=True)


@pytest.mark.slow
def test_compile_with_inductor_in_training_and_deployed():
    check_train_and_deployed("inductor")
