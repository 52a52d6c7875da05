"""The interpolation op x = alpha_i * real + (1 - alpha_i) * fake: Triton op definitions, fake (meta)
implementations for the compiled ops (torch.ops.gpkernels, csrc/ops.cpp) and the Triton ops
(torch.ops.gpkernels_triton), and the Triton ops' autograd (the compiled ops carry the same derivatives in
C++, csrc/autograd.cpp). Reference: gpkernels.reference.interpolate.

Derivatives (gx: the gradient reaching x):
    d/dreal = alpha_i * gx,  d/dfake = (1 - alpha_i) * gx,  d/dalpha_i = <real_i - fake_i, gx_i>
computed by the fused op interp_backward. interp_backward is bilinear, so its own backward is written
with interp and elementwise ops, which autograd can differentiate to any order.
"""

import torch

from .. import _checks
from ..reference import per_sample_view
from . import _layout


def _triton():
    from .. import _triton_kernels

    return _triton_kernels


@torch.library.custom_op("gpkernels_triton::interp", mutates_args=())
def triton_interp(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """real, fake: (B, *); alpha: (B,) in real's dtype. Returns (B, *)."""
    where = "gpkernels_triton::interp"
    _checks.samples(where, "real", real)
    _checks.same_as(where, "fake", fake, "real", real)
    _checks.per_sample(where, "alpha", alpha, real, real.dtype)
    r = _layout.as_rows(real)
    f = _layout.rows_like(fake, r)
    out = _triton().interp(_layout.matrix(r), _layout.matrix(f), alpha.contiguous())
    return _layout.unmatrix(out, r)


@torch.library.custom_op("gpkernels_triton::interp_backward", mutates_args=())
def triton_interp_backward(grad: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                           alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad, real, fake: (B, *); alpha: (B,). Returns (g_real (B, *), g_fake (B, *), g_alpha (B,))."""
    where = "gpkernels_triton::interp_backward"
    _checks.samples(where, "grad", grad)
    _checks.same_as(where, "real", real, "grad", grad)
    _checks.same_as(where, "fake", fake, "grad", grad)
    _checks.per_sample(where, "alpha", alpha, grad, grad.dtype)
    g = _layout.as_rows(grad)
    r = _layout.rows_like(real, g)
    f = _layout.rows_like(fake, g)
    g_real, g_fake, g_alpha = _triton().interp_backward(
        _layout.matrix(g), _layout.matrix(r), _layout.matrix(f), alpha.contiguous())
    return _layout.unmatrix(g_real, g), _layout.unmatrix(g_fake, g), g_alpha


def _fake_interp(real, fake, alpha):
    return _layout.empty_rows_like(real)


def _fake_interp_backward(grad, real, fake, alpha):
    return _layout.empty_rows_like(grad), _layout.empty_rows_like(grad), alpha.new_empty(grad.shape[0])


def _setup_interp(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # real, fake, alpha


def _setup_interp_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # grad, real, fake, alpha


def _autograd(ops):
    def interp_vjp(ctx, grad):
        real, fake, alpha = ctx.saved_tensors
        return ops.interp_backward(grad, real, fake, alpha)

    def interp_backward_vjp(ctx, v_real, v_fake, v_alpha):
        grad, real, fake, alpha = ctx.saved_tensors
        va = per_sample_view(v_alpha, grad)
        d_grad = ops.interp(v_real, v_fake, alpha) + va * (real - fake)
        d_real = va * grad
        d_alpha = ((v_real - v_fake) * grad).reshape(grad.shape[0], -1).sum(
            dim=1, dtype=_layout.accum_dtype(grad.dtype)).to(alpha.dtype)
        return d_grad, d_real, -d_real, d_alpha

    return interp_vjp, interp_backward_vjp


def register(namespace, autograd):
    """Fake implementations (and, with autograd=True, Python autograd) for the interp ops of `namespace`."""
    torch.library.register_fake(f"{namespace}::interp", _fake_interp)
    torch.library.register_fake(f"{namespace}::interp_backward", _fake_interp_backward)
    if not autograd:
        return
    interp_vjp, interp_backward_vjp = _autograd(getattr(torch.ops, namespace))
    torch.library.register_autograd(f"{namespace}::interp", interp_vjp, setup_context=_setup_interp)
    torch.library.register_autograd(f"{namespace}::interp_backward", interp_backward_vjp,
                                    setup_context=_setup_interp_backward)
