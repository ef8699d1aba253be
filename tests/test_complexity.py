"""MAC counting: attention is counted the same whichever kernel PyTorch dispatches."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vitmix  # noqa: F401  (registers the models)
from vitmix.complexity import attention_flop_formulas, count_macs

# The kernels scaled_dot_product_attention can take on a CPU; None is PyTorch's own choice.
CPU_BACKENDS = [None, SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]


def counted_flops(fn, backend):
    with FlopCounterMode(display=False, custom_mapping=attention_flop_formulas()) as counter:
        if backend is None:
            fn()
        else:
            with sdpa_kernel([backend]):
                fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("backend", CPU_BACKENDS, ids=str)
def test_bare_attention_call_counts_both_matmuls(backend):
    b, h, n, d = 2, 3, 17, 8
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    with torch.no_grad():
        flops = counted_flops(lambda: F.scaled_dot_product_attention(q, k, v), backend)
    # Q K^T and (softmax) V: B*H*N*N*d multiply-accumulates each.
    assert flops // 2 == 2 * b * h * n * n * d


@pytest.mark.parametrize("backend", CPU_BACKENDS, ids=str)
def test_cross_attention_counts_query_and_key_lengths(backend):
    b, h, n_q, n_kv, d = 1, 2, 5, 11, 8
    q, k, v = torch.randn(b, h, n_q, d), torch.randn(b, h, n_kv, d), torch.randn(b, h, n_kv, d)
    with torch.no_grad():
        flops = counted_flops(lambda: F.scaled_dot_product_attention(q, k, v), backend)
    assert flops // 2 == 2 * b * h * n_q * n_kv * d


def test_value_width_other_than_the_query_width():
    # The math path is the only CPU kernel for this; the formula must agree with its matmuls.
    b, h, n, e, ev = 1, 2, 7, 8, 12
    q, k, v = torch.randn(b, h, n, e), torch.randn(b, h, n, e), torch.randn(b, h, n, ev)
    with torch.no_grad():
        flops = counted_flops(lambda: F.scaled_dot_product_attention(q, k, v), None)
    assert flops // 2 == b * h * n * n * (e + ev)


def test_fused_backward_recomputes_the_scores_once_more_than_the_math_path():
    b, h, n, d = 2, 2, 9, 4

    def forward_backward():
        q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
        F.scaled_dot_product_attention(q, k, v).sum().backward()

    fused = counted_flops(forward_backward, SDPBackend.FLASH_ATTENTION)
    math = counted_flops(forward_backward, SDPBackend.MATH)
    assert math == 2 * (2 + 4) * b * h * n * n * d  # forward: 2 matmuls, backward: 4
    assert fused == math + 2 * b * h * n * n * d  # the flash backward recomputes Q K^T


def test_model_macs_do_not_depend_on_the_attention_kernel():
    model = timm.create_model("metaformer_ppaa_s12")
    default = count_macs(model, 224)
    with sdpa_kernel([SDPBackend.MATH]):
        assert count_macs(model, 224) == default
    # The README's table: 2.549 G (fvcore counts the authors' model at 2.56 G).
    assert abs(default / 1e9 - 2.549) < 0.0005
