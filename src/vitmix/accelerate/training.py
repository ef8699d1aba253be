"""Memory-lean training for the MLPs and CCA: autograd functions over chunks.

The plain layers let autograd keep what backward needs: for an MLP the E-times-wide hidden
activation twice (before and after the activation function), for CCA a (B, C, C) softmax per
layer and the branch outputs the mixing weight multiplies. The functions here keep only their
inputs. They run over chunks of rows (the MLP) or of samples (CCA) small enough that a chunk's
hidden activation or C x C attention stays in cache, and recompute it in backward, chunk by chunk,
instead of reading it back from memory. That trades one extra fc1 product for every pass over
the hidden activation that is no longer written out and read back.

The products go through oneDNN on the CPU (``torch.ops.mkldnn._linear_pointwise``, the op
torch.compile's CPU backend emits), with the activation fused into fc1 where oneDNN has it: on
the CPUs measured here it runs float32 matrix products about twice as fast as ``F.linear``
(docs/performance.md). Elsewhere (CUDA, float64 for the gradient checks, other dtypes) the same
loops run on ``F.linear``.

Only the accelerated twins of :mod:`.modules` call these functions, and only when
:func:`training_allowed`; they compute the same function as the plain layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.scheme import covariance_softmax
from .kernels import eager_mode
from .switch import is_enabled

__all__ = ["ActivationRule", "HAS_ONEDNN_LINEAR", "activation_rule", "block_diagonal_mlp",
           "covariance_mix", "linear", "training_allowed"]

HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise")

# The hidden activation of one group in one chunk of rows. Backward holds four such buffers
# (pre-activation, activation, their gradients) while the chunk is worked on; about a megabyte
# each keeps them in a core's L2 and L3 and still makes the matrix products large enough to run
# near full speed (docs/performance.md has the sweep).
TRAIN_CHUNK_BYTES = 3 << 21
# The C x C attention of the samples of one CCA chunk.
CCA_CHUNK_BYTES = 1 << 20


def training_allowed(x: torch.Tensor, *weights: torch.Tensor | None) -> bool:
    """Whether a twin may train through the functions here: the switch on, autograd recording
    something, eager mode (compilers, exporters and FLOP counting see the plain layers)."""
    if not is_enabled() or not torch.is_grad_enabled():
        return False
    if not (x.requires_grad or any(w is not None and w.requires_grad for w in weights)):
        return False
    return x.is_floating_point() and eager_mode()


# ---- activations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationRule:
    """How the functions apply an activation module and differentiate it.

    ``post_op``: oneDNN's name and algorithm when it can be fused into fc1 (None: applied after).
    ``forward(hp)``: the activation. ``backward(grad, hp)``: the gradient with respect to hp.
    """

    post_op: tuple[str, str] | None
    forward: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _gelu_rule(approximate: str) -> ActivationRule:
    return ActivationRule(
        ("gelu", approximate), lambda h: F.gelu(h, approximate=approximate),
        lambda g, h: torch.ops.aten.gelu_backward(g, h, approximate=approximate))


def _autograd_backward(act: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The gradient of any elementwise, parameter-free activation, by autograd on the chunk."""
    def backward(grad: torch.Tensor, hp: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = hp.detach().requires_grad_()
            return torch.autograd.grad(act(leaf), leaf, grad)[0]
    return backward


_RELU = ActivationRule(("relu", ""), torch.relu,
                       lambda g, h: torch.ops.aten.threshold_backward(g, h, 0))
_SILU = ActivationRule(("swish", ""), F.silu, lambda g, h: torch.ops.aten.silu_backward(g, h))
_IDENTITY = ActivationRule(("none", ""), lambda h: h, lambda g, h: g)


def activation_rule(act: nn.Module) -> ActivationRule | None:
    """The rule for ``act``, or None when the functions cannot take it (it has parameters: its
    gradient would be lost)."""
    kind = type(act)
    if kind is nn.GELU:
        return _gelu_rule(act.approximate)
    if kind is nn.ReLU:
        return _RELU
    if kind is nn.SiLU:
        return _SILU
    if kind is nn.Identity:
        return _IDENTITY
    if any(True for _ in act.parameters()):
        return None
    return ActivationRule(None, act, _autograd_backward(act))


# ---- matrix products ----------------------------------------------------------------------------


def _onednn(a: torch.Tensor, w: torch.Tensor) -> bool:
    return (HAS_ONEDNN_LINEAR and a.device.type == "cpu" and a.dtype == w.dtype
            and a.dtype in (torch.float32, torch.bfloat16))


def matmul_t(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
             act: ActivationRule | None = None, add: torch.Tensor | None = None
             ) -> torch.Tensor:
    """``act(a @ w.T + bias)``, or ``a @ w.T + add``, for 2-D ``a`` (m, k) and ``w`` (n, k);
    either may be a strided view. The activation or the addition is fused into the product
    where oneDNN has it."""
    if _onednn(a, w):
        if add is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(a, add, w, bias, "add")
        post, algorithm = ("none", "") if act is None or act.post_op is None else act.post_op
        y = torch.ops.mkldnn._linear_pointwise(a, w, bias, post, [], algorithm)
        return y if act is None or act.post_op is not None else act.forward(y)
    y = F.linear(a, w, bias)
    if add is not None:
        return y.add_(add)
    return y if act is None else act.forward(y)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the plain layers would compute in: autocast's, when it is on for x's device."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _no_autocast(device: torch.device):
    # The functions cast explicitly; autocast would recast their fp32 accumulators.
    return torch.autocast(device.type, enabled=False)


def _chunks(total: int, step: int) -> list[slice]:
    return [slice(start, min(start + step, total)) for start in range(0, total, step)]


# ---- dropout masks, replayed in backward --------------------------------------------------------


class _Masks:
    """Dropout masks drawn in forward and drawn again, identical, in backward: the generator's
    state at the start of forward is kept, and backward replays it in a forked RNG, so the
    global stream is left as forward left it."""

    def __init__(self, p: float, device: torch.device):
        self.p, self.device = p, device
        self.state = None
        if p > 0:
            self.state = (torch.cuda.get_rng_state(device) if device.type == "cuda"
                          else torch.get_rng_state())

    @contextlib.contextmanager
    def replay(self):
        """Within this context, :meth:`draw` gives the masks forward drew, in the same order."""
        if self.p == 0:
            yield
            return
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            if cuda:
                torch.cuda.set_rng_state(self.state, self.device)
            else:
                torch.set_rng_state(self.state)
            yield

    def draw(self, like: torch.Tensor) -> torch.Tensor | None:
        """Scaled keep-mask (0 or 1/(1-p)) shaped like ``like``; None without dropout."""
        if self.p == 0:
            return None
        return torch.empty_like(like).bernoulli_(1 - self.p).div_(1 - self.p)


# ---- the block-diagonal MLP ----------------------------------------------------------------------


@dataclass(frozen=True)
class MlpSpec:
    act: ActivationRule
    drop: float
    store_hidden: bool
    dtype: torch.dtype


def _hidden_chunk_rows(hidden_per_group: int, element_size: int) -> int:
    return max(64, TRAIN_CHUNK_BYTES // (hidden_per_group * element_size))


class _BlockDiagonalMlp(torch.autograd.Function):
    """fc2(drop(act(fc1(rows)))) with block-diagonal fc1 (G, hg, cg) and fc2 (G, og, hg) on
    (M, G*cg) rows, keeping only the rows (or, with ``store_hidden``, also the pre-activation)
    for backward."""

    @staticmethod
    def forward(ctx, rows, w1, b1, w2, b2, spec: MlpSpec):
        groups, hg, cg = w1.shape
        og = w2.shape[1]
        dtype = spec.dtype
        masks = _Masks(spec.drop, rows.device)
        with torch.no_grad(), _no_autocast(rows.device):
            w1c, w2c = w1.to(dtype), w2.to(dtype)
            b1c = None if b1 is None else b1.to(dtype).view(groups, hg)
            b2c = None if b2 is None else b2.to(dtype).view(groups, og)
            out = rows.new_empty(rows.shape[0], groups * og, dtype=dtype)
            hidden = (rows.new_empty(rows.shape[0], groups * hg, dtype=dtype)
                      if spec.store_hidden else None)
            fused = spec.act if masks.p == 0 and not spec.store_hidden else None
            for r in _chunks(rows.shape[0], _hidden_chunk_rows(hg, out.element_size())):
                xc = rows[r].to(dtype)
                parts = []
                for g in range(groups):
                    xg = xc if groups == 1 else xc[:, g * cg:(g + 1) * cg]
                    b1g = None if b1c is None else b1c[g]
                    if fused is not None:
                        h = matmul_t(xg, w1c[g], b1g, fused)
                    else:
                        hp = matmul_t(xg, w1c[g], b1g)
                        if hidden is not None:
                            hidden[r, g * hg:(g + 1) * hg] = hp
                        h = spec.act.forward(hp)
                        mask = masks.draw(h)
                        if mask is not None:
                            h = h * mask
                    parts.append(matmul_t(h, w2c[g], None if b2c is None else b2c[g]))
                if groups == 1:
                    out[r] = parts[0]
                else:
                    torch.cat(parts, dim=1, out=out[r])
        ctx.spec, ctx.masks = spec, masks
        ctx.save_for_backward(rows, w1, b1, w2, b2, hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rows, w1, b1, w2, b2, hidden = ctx.saved_tensors
        spec, masks = ctx.spec, ctx.masks
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        groups, hg, cg = w1.shape
        og = w2.shape[1]
        dtype = spec.dtype
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        with torch.no_grad(), _no_autocast(rows.device), masks.replay():
            grad_out = grad_out.to(dtype).contiguous()
            w1c, w2c = w1.to(dtype), w2.to(dtype)
            b1c = None if b1 is None else b1.to(dtype).view(groups, hg)
            gx = torch.empty_like(rows) if need_x else None
            gw1 = torch.zeros(w1.shape, dtype=acc, device=w1.device) if need_w1 else None
            gw2 = torch.zeros(w2.shape, dtype=acc, device=w2.device) if need_w2 else None
            gb1 = (torch.zeros(groups, hg, dtype=acc, device=w1.device)
                   if need_b1 and b1 is not None else None)
            for r in _chunks(rows.shape[0], _hidden_chunk_rows(hg, grad_out.element_size())):
                xc, gc = rows[r].to(dtype), grad_out[r]
                parts = []
                for g in range(groups):
                    xg = xc if groups == 1 else xc[:, g * cg:(g + 1) * cg]
                    gy = gc if groups == 1 else gc[:, g * og:(g + 1) * og]
                    if hidden is not None:
                        hp = hidden[r, g * hg:(g + 1) * hg]
                    else:
                        hp = matmul_t(xg, w1c[g], None if b1c is None else b1c[g])
                    h = spec.act.forward(hp)
                    mask = masks.draw(h)
                    if gw2 is not None:
                        hd = h if mask is None else h * mask
                        gw2[g] += matmul_t(gy.t(), hd.t())
                    gh = matmul_t(gy, w2c[g].t())
                    if mask is not None:
                        gh = gh * mask
                    ghp = spec.act.backward(gh, hp)
                    if gw1 is not None:
                        # (cg, hg) then transposed: oneDNN reads the rows' column slice fast only
                        # as the first operand.
                        gw1[g] += matmul_t(xg.t(), ghp.t()).t()
                    if gb1 is not None:
                        gb1[g] += ghp.sum(0, dtype=acc)
                    if gx is not None:
                        parts.append(matmul_t(ghp, w1c[g].t()))
                if gx is not None:
                    if groups == 1:
                        gx[r] = parts[0]
                    else:
                        torch.cat(parts, dim=1, out=gx[r])
            gb2 = (grad_out.sum(0, dtype=acc).to(b2.dtype)
                   if need_b2 and b2 is not None else None)
        return (gx, None if gw1 is None else gw1.to(w1.dtype),
                None if gb1 is None else gb1.view(-1).to(b1.dtype),
                None if gw2 is None else gw2.to(w2.dtype), gb2, None)


def block_diagonal_mlp(rows: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                       w2: torch.Tensor, b2: torch.Tensor | None, act: ActivationRule,
                       drop: float = 0.0, store_hidden: bool = False) -> torch.Tensor:
    """``fc2(dropout(act(fc1(rows))))`` on (M, in) rows, fc1 and fc2 block diagonal with weights
    (G, hidden/G, in/G) and (G, out/G, hidden/G) (G = 1: dense), in the dtype the plain layers
    would compute in. The hidden activation is recomputed in backward unless ``store_hidden``.
    ``drop``: the dropout probability after the activation (training mode)."""
    spec = MlpSpec(act, float(drop), bool(store_hidden), compute_dtype(rows))
    return _BlockDiagonalMlp.apply(rows, w1, b1, w2, b2, spec)


# ---- CCA and the mixing -------------------------------------------------------------------------


# From this much product work per sample (N C^2 multiply-adds) on, CCA's products run sample by
# sample through oneDNN on the CPU (see matmul_t); below it one batched product per chunk of
# samples saves the per-call overhead, which would outweigh products that small.
CCA_PER_SAMPLE_MIN_MACS = 1 << 22


def _cca_chunks(tokens: torch.Tensor) -> list[int] | list[slice]:
    """Single samples (indices, so each is a 2-D matrix for oneDNN) where each has work enough
    for its own products, else chunks of samples that keep a chunk's C x C attention near
    CCA_CHUNK_BYTES."""
    if _per_sample(tokens):
        return list(range(tokens.shape[0]))
    c = tokens.shape[-1]
    return _chunks(tokens.shape[0], max(1, CCA_CHUNK_BYTES // (c * c * 4)))


def _per_sample(tokens: torch.Tensor) -> bool:
    n, c = tokens.shape[-2:]
    return (tokens.device.type == "cpu" and _onednn(tokens, tokens)
            and n * c * c >= CCA_PER_SAMPLE_MIN_MACS)


def _gram(xt: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * X^T X from X^T: (C, N) for one sample, (b, C, N) for a chunk."""
    if xt.dim() == 2:
        return matmul_t(xt, xt).mul_(scale)
    return torch.baddbmm(xt.new_zeros(1, 1, 1), xt, xt.transpose(1, 2), beta=0, alpha=scale)


def _times_t(a: torch.Tensor, m: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``add + a @ m^T`` for one sample's 2-D matrices (through matmul_t) or a chunk's 3-D
    batches (through bmm)."""
    if a.dim() == 2:
        return matmul_t(a, m, add=add)
    if add is None:
        return torch.bmm(a, m.transpose(1, 2))
    return torch.baddbmm(add, a, m.transpose(1, 2))


def _transposed(x: torch.Tensor) -> torch.Tensor:
    """X^T of (N, C) or (b, N, C); one sample's copied contiguous, which oneDNN reads fastest."""
    return x.t().contiguous() if x.dim() == 2 else x.transpose(1, 2)


def _per_row(w: torch.Tensor) -> torch.Tensor:
    """The mixing weight as a factor on the rows of a C x C matrix."""
    return w if w.dim() == 0 else w.view(-1, 1)


class _CovarianceMix(torch.autograd.Function):
    """``y + weight * X A^T`` with A = softmax(scale X^T X) per sample; A is recomputed in
    backward, so nothing larger than the inputs is kept. Samples run one at a time through
    oneDNN where each has work enough (see _cca_chunks), else in batched chunks."""

    @staticmethod
    def forward(ctx, tokens, y, weight, scale: float, dtype: torch.dtype):
        acc = torch.promote_types(dtype, torch.float32)
        with torch.no_grad(), _no_autocast(tokens.device):
            out = torch.empty(y.shape, dtype=dtype, device=y.device)
            w = weight.to(acc)
            tokens_c = tokens.to(dtype)
            for s in _cca_chunks(tokens_c):
                x = tokens_c[s]
                attn = torch.softmax(_gram(_transposed(x), scale), dim=-1, dtype=acc)
                mixing = attn.mul_(_per_row(w)).to(dtype)  # y + X (diag(w) A)^T
                out[s] = _times_t(x, mixing, add=y[s].to(dtype))
        ctx.scale, ctx.dtype = scale, dtype
        ctx.save_for_backward(tokens, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        tokens, weight = ctx.saved_tensors
        scale, dtype = ctx.scale, ctx.dtype
        acc = torch.promote_types(dtype, torch.float32)
        need_x, need_y, need_w = ctx.needs_input_grad[:3]
        with torch.no_grad(), _no_autocast(tokens.device):
            w = weight.to(acc)
            tokens_c, grad_c = tokens.to(dtype), grad_out.to(dtype)
            gx = torch.empty_like(tokens) if need_x else None
            grad_w = torch.zeros(w.shape, dtype=acc, device=tokens.device)
            for s in _cca_chunks(tokens_c):
                x, g = tokens_c[s], grad_c[s]
                xt = _transposed(x)
                attn = torch.softmax(_gram(xt, scale), dim=-1, dtype=acc)  # recomputed
                # P = G^T X, the gradient of A over w; c_i = sum_j P_ij A_ij.
                products = _times_t(_transposed(g), xt).to(acc)
                rows = (products * attn).sum(-1, keepdim=True)
                grad_w += rows.sum() if w.dim() == 0 else rows.view(-1, w.shape[0]).sum(0)
                if gx is None:
                    continue
                # The softmax's backward: dL = diag(w) A (P - c). With L = scale X^T X, X's
                # gradient is G diag(w) A + X M, M = scale (dL + dL^T), symmetric.
                w_rows = _per_row(w)
                grad_logits = products.sub_(rows).mul_(attn).mul_(w_rows)
                sym = (grad_logits + grad_logits.transpose(-1, -2)).mul_(scale).to(dtype)
                mixing = attn.mul_(w_rows).to(dtype)
                through_mix = _times_t(g, mixing.transpose(-1, -2))
                gx[s] = _times_t(x, sym, add=through_mix)
        return (gx, grad_out if need_y else None,
                grad_w.to(weight.dtype) if need_w else None, None, None)


def covariance_mix(tokens: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """``y + weight * CCA(tokens)`` for (B, N, C) tokens and a (B, N, C) ``y``: CCA's output is
    ``X softmax(scale X^T X)^T`` per sample, as in
    :class:`vitmix.layers.ChannelCovarianceAttention`. ``weight`` is a 0-dim tensor or one value
    per channel (C,); gradients flow to it.

    With fewer tokens than channels the C x C attention is larger than the tokens, and where
    the products are also too small to run sample by sample through oneDNN, recomputing it in
    backward cost more than autograd's keeping it; there the attention is kept, as the plain
    layer keeps it."""
    n, c = tokens.shape[-2:]
    if n < c and not _per_sample(tokens):
        return _covariance_mix_kept(tokens, y, weight, scale)
    return _CovarianceMix.apply(tokens, y, weight, float(scale), compute_dtype(tokens))


def _covariance_mix_kept(tokens: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """covariance_mix through autograd, in the plain layer's operations (and autocast's dtypes)."""
    attn = covariance_softmax(tokens.transpose(1, 2), scale)
    mixed = torch.bmm(tokens, attn.transpose(1, 2))
    return y + mixed * weight.to(mixed.dtype)


# ---- linear layers ------------------------------------------------------------------------------


class _Linear(torch.autograd.Function):
    """``x @ w.T + b`` on (M, in) rows with every product through :func:`matmul_t`."""

    @staticmethod
    def forward(ctx, rows, weight, bias, dtype: torch.dtype):
        with torch.no_grad(), _no_autocast(rows.device):
            out = matmul_t(rows.to(dtype), weight.to(dtype),
                           None if bias is None else bias.to(dtype))
        ctx.dtype = dtype
        ctx.save_for_backward(rows, weight, bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rows, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = ctx.dtype
        with torch.no_grad(), _no_autocast(rows.device):
            g = grad_out.to(dtype)
            gx = matmul_t(g, weight.to(dtype).t()).to(rows.dtype) if need_x else None
            gw = matmul_t(g.t(), rows.to(dtype).t()).to(weight.dtype) if need_w else None
            gb = (g.sum(0, dtype=torch.promote_types(dtype, torch.float32)).to(bias.dtype)
                  if need_b and bias is not None else None)
        return gx, gw, gb, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for (..., in) tokens through :func:`matmul_t`."""
    rows = x.reshape(-1, x.shape[-1])
    out = _Linear.apply(rows, weight, bias, compute_dtype(x))
    return out.view(*x.shape[:-1], weight.shape[0])
