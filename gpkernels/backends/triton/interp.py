"""The interpolation op on the Triton backend: torch.ops.gpkernels_triton.interp and interp_backward, their
launch sequences and autograd (the compiled ops carry the same derivatives in C++, csrc/autograd.cpp).
Reference: gpkernels.reference.interpolate.

    x = alpha_i * real + (1 - alpha_i) * fake
Derivatives (gx: the gradient reaching x):
    d/dreal = alpha_i * gx,  d/dfake = (1 - alpha_i) * gx,  d/dalpha_i = <real_i - fake_i, gx_i>
computed by the fused op interp_backward. interp_backward is bilinear, so its own backward is written
with interp and elementwise ops, which autograd can differentiate to any order.

The ops check their tensors (shapes, dtypes, devices: what the kernels need to stay in bounds) because
they are public entry points of their own (torch.ops, opcheck, torch.compile); the launchers do not.
"""

import torch

from ... import _checks
from ...reference import accum_dtype, per_sample_view
from .. import _schema as S


def _kernels():
    from . import _kernels

    return _kernels


@torch.library.custom_op("gpkernels_triton::interp", mutates_args=())
def interp(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """real, fake: (B, *); alpha: (B,) in real's dtype. Returns (B, *) in real's layout (as_rows)."""
    where = "gpkernels_triton::interp"
    _checks.samples(where, "real", real)
    _checks.same_as(where, "fake", fake, "real", real)
    _checks.per_sample(where, "alpha", alpha, real, real.dtype)
    K = _kernels()
    with K.on_device(real):
        r = S.as_rows(real)
        rows = S.matrix(r)
        out = torch.empty_like(rows)
        K.launch_axpby(rows, alpha.contiguous(), out, y=S.matrix(S.rows_like(fake, r)), b_is_one_minus_a=True)
        return S.unmatrix(out, r)


@torch.library.custom_op("gpkernels_triton::interp_backward", mutates_args=())
def interp_backward(grad: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                    alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad, real, fake: (B, *); alpha: (B,). Returns (g_real (B, *), g_fake (B, *), g_alpha (B,)) in one
    pass over the rows: g_real = alpha_i grad_i, g_fake = (1 - alpha_i) grad_i, g_alpha_i summed in the
    accumulation dtype and returned in the rows' dtype."""
    where = "gpkernels_triton::interp_backward"
    _checks.samples(where, "grad", grad)
    _checks.same_as(where, "real", real, "grad", grad)
    _checks.same_as(where, "fake", fake, "grad", grad)
    _checks.per_sample(where, "alpha", alpha, grad, grad.dtype)
    K = _kernels()
    with K.on_device(grad):
        g = S.as_rows(grad)
        rows = S.matrix(g)
        B = rows.shape[0]
        g_real, g_fake = torch.empty_like(rows), torch.empty_like(rows)
        g_alpha = torch.empty((B,), dtype=grad.dtype, device=grad.device)
        part, nchunks = K.launch_reduce(K.RED_INTERP, rows, y=S.matrix(S.rows_like(real, g)),
                                        z=S.matrix(S.rows_like(fake, g)), alpha=alpha.contiguous(), out_y=g_real,
                                        out_z=g_fake)
        K.launch_finalize(K.FIN_ALPHA, B, part, nchunks, None, False, K.tl_acc(grad.dtype), out0=g_alpha)
        return S.unmatrix(g_real, g), S.unmatrix(g_fake, g), g_alpha


# ------------------------------------------------------------------------------------------------ autograd

def _setup_interp(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # real, fake, alpha


def _interp_vjp(ctx, grad):
    real, fake, alpha = ctx.saved_tensors
    return interp_backward(grad, real, fake, alpha)


def _setup_interp_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # grad, real, fake, alpha


def _interp_backward_vjp(ctx, v_real, v_fake, v_alpha):
    grad, real, fake, alpha = ctx.saved_tensors
    va = per_sample_view(v_alpha, grad)
    d_grad = interp(v_real, v_fake, alpha) + va * (real - fake)
    d_real = va * grad
    d_alpha = ((v_real - v_fake) * grad).reshape(grad.shape[0], -1).sum(
        dim=1, dtype=accum_dtype(grad.dtype)).to(alpha.dtype)
    return d_grad, d_real, -d_real, d_alpha


interp.register_autograd(_interp_vjp, setup_context=_setup_interp)
interp_backward.register_autograd(_interp_backward_vjp, setup_context=_setup_interp_backward)
