"""The gradient-penalty ops on the Triton backend: torch.ops.gpkernels_triton.penalty_forward,
penalty_backward and penalty_double_backward, their launch sequences and autograd (the compiled ops carry
the same derivatives in C++, csrc/autograd.cpp). Reference: gpkernels.reference.penalty_terms.

Per sample i (g_i flattened, s = inv_scale, t = target, w = weight, p = exponent; csrc/common/penalty_math.h
has the derivation and the special cases):
    penalty_forward:          norms_i = s ||g_i||, values_i = w |d_i|^p, d_i = norms_i - t (one-sided: max(0, .))
    penalty_backward:         dgrads_i = gv_i c_i g_i,  c_i = w p phi(d_i) s^2 / n_i  (gv: gradient of values,
                              phi(d) = |d|^(p-1) sign(d); p = 2: c_i = 2 w s d_i / ||g_i||)
    penalty_double_backward:  for V (the gradient reaching dgrads):
                              d gv_i = c_i <g_i, V_i>,  d g_i = gv_i (c_i V_i + k_i <g_i, V_i> g_i),
                              k_i = (dc_i/dn_i) s^2 / n_i  (p = 2: k_i = 2 w s t / ||g_i||^3)
penalty_backward takes the forward's norms as an input instead of stashing intermediates; its own
derivative is the full derivative in g (the k term accounts for the norms' dependence on g), so the norms
get no gradient there, and they are a non-differentiable output of penalty_forward.

Checks: every op checks its tensors (the kernels' memory-safety preconditions; the ops are public entry
points of their own). The scalars are checked by penalty_forward only, the entry of the chain: the
backward ops receive the forward's scalars, and a bad scalar there cannot reach out of bounds.
"""

import torch

from ... import _checks
from ...reference import accum_dtype
from .. import _schema as S


def _kernels():
    from . import _kernels

    return _kernels


@torch.library.custom_op("gpkernels_triton::penalty_forward", mutates_args=())
def penalty_forward(grads: torch.Tensor, target: float, one_sided: bool, weight: float,
                    inv_scale: float, exponent: float) -> tuple[torch.Tensor, torch.Tensor]:
    """grads: (B, *). Returns (values (B,), norms (B,)) in the accumulation dtype."""
    where = "gpkernels_triton::penalty_forward"
    _checks.samples(where, "grads", grads)
    _checks.finite_number(where, "target", target)
    _checks.finite_number(where, "weight", weight)
    _checks.finite_number(where, "inv_scale", inv_scale, strict=True)
    _checks.finite_number(where, "exponent", exponent, minimum=1.0)
    K = _kernels()
    with K.on_device(grads):
        rows = S.matrix(S.as_rows(grads))
        B = rows.shape[0]
        acc = accum_dtype(grads.dtype)
        values = torch.empty((B,), dtype=acc, device=grads.device)
        norms = torch.empty((B,), dtype=acc, device=grads.device)
        part, nchunks = K.launch_reduce(K.RED_SUMSQ, rows)
        K.launch_finalize(K.FIN_FORWARD, B, part, nchunks, (target, weight, inv_scale, exponent), one_sided,
                          K.tl_acc(acc), norms=norms, out0=values)
        return values, norms


@torch.library.custom_op("gpkernels_triton::penalty_backward", mutates_args=())
def penalty_backward(grad_values: torch.Tensor, grads: torch.Tensor, norms: torch.Tensor, target: float,
                     one_sided: bool, weight: float, inv_scale: float, exponent: float) -> torch.Tensor:
    """grad_values, norms: (B,) accumulation dtype (norms as penalty_forward returned them); grads: (B, *).
    Returns dgrads (B, *) = grad_values_i c_i g_i."""
    where = "gpkernels_triton::penalty_backward"
    _checks.samples(where, "grads", grads)
    acc = accum_dtype(grads.dtype)
    _checks.per_sample(where, "grad_values", grad_values, grads, acc)
    _checks.per_sample(where, "norms", norms, grads, acc)
    K = _kernels()
    with K.on_device(grads):
        g = S.as_rows(grads)
        rows = S.matrix(g)
        B = rows.shape[0]
        coef = torch.empty((2, B), dtype=acc, device=grads.device)  # gv_i c_i as coef * (g * scale)
        K.launch_finalize(K.FIN_BACKWARD, B, coef, 0, (target, weight, inv_scale, exponent), one_sided,
                          K.tl_acc(acc), norms=norms.contiguous(), gout=grad_values.contiguous(), out0=coef[0],
                          out1=coef[1])
        dgrads = torch.empty_like(rows)
        K.launch_axpby(rows, coef[0], dgrads, qa=coef[1])
        return S.unmatrix(dgrads, g)


@torch.library.custom_op("gpkernels_triton::penalty_double_backward", mutates_args=())
def penalty_double_backward(v: torch.Tensor, grad_values: torch.Tensor, grads: torch.Tensor, target: float,
                            one_sided: bool, weight: float, inv_scale: float,
                            exponent: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v, grads: (B, *); grad_values: (B,). Returns (d_grad_values (B,), d_grads (B, *)): dot_i = <g_i, v_i>
    and n_i in one pass, d_grad_values_i = c_i dot_i, d_grads_i = a_i v_i + b_i g_i with a_i = gv_i c_i and
    b_i = gv_i k_i dot_i."""
    where = "gpkernels_triton::penalty_double_backward"
    _checks.samples(where, "grads", grads)
    _checks.same_as(where, "v", v, "grads", grads)
    acc = accum_dtype(grads.dtype)
    _checks.per_sample(where, "grad_values", grad_values, grads, acc)
    K = _kernels()
    with K.on_device(grads):
        g = S.as_rows(grads)
        rows, v_rows = S.matrix(g), S.matrix(S.rows_like(v, g))
        B = rows.shape[0]
        part, nchunks = K.launch_reduce(K.RED_SUMSQ_DOT, rows, y=v_rows)
        # a_i = gv_i c_i, b_i = gv_i k_i dot_i, d_gv_i = c_i dot_i (at the smallest norms with a's scale, gamma and
        # sigma: penalty_math.h, DoubleBackwardTerms)
        coef_v, coef_g, scale_v, gamma, sigma = torch.empty((5, B), dtype=acc, device=grads.device)
        d_gv = torch.empty((B,), dtype=acc, device=grads.device)  # returned: a tensor of its own
        K.launch_finalize(K.FIN_DOUBLE, B, part, nchunks, (target, weight, inv_scale, exponent), one_sided,
                          K.tl_acc(acc), gout=grad_values.contiguous(), out0=coef_v, out1=coef_g, out2=d_gv,
                          out3=scale_v, out4=gamma, out5=sigma)
        d_grads = torch.empty_like(rows)
        K.launch_axpby(v_rows, coef_v, d_grads, y=rows, b=coef_g, qa=scale_v, gamma=gamma, sigma=sigma)
        return d_gv, S.unmatrix(d_grads, g)


# ------------------------------------------------------------------------------------------------ autograd

def _setup_forward(ctx, inputs, output):
    grads, *scalars = inputs
    values, norms = output
    ctx.mark_non_differentiable(norms)
    ctx.save_for_backward(grads, norms)
    ctx.scalars = scalars


def _forward_vjp(ctx, grad_values, grad_norms):
    grads, norms = ctx.saved_tensors
    return (penalty_backward(grad_values, grads, norms, *ctx.scalars),) + (None,) * 5


def _setup_backward(ctx, inputs, output):
    grad_values, grads, norms, *scalars = inputs
    ctx.save_for_backward(grad_values, grads)
    ctx.scalars = scalars


def _backward_vjp(ctx, v):
    grad_values, grads = ctx.saved_tensors
    d_gv, d_g = penalty_double_backward(v, grad_values, grads, *ctx.scalars)
    return (d_gv, d_g) + (None,) * 6


def _third_order(ctx, *grads):
    raise NotImplementedError(
        "gpkernels: the fused penalty is differentiable twice (double backward); a third derivative is not "
        "implemented. Use backend='reference' for higher orders.")


penalty_forward.register_autograd(_forward_vjp, setup_context=_setup_forward)
penalty_backward.register_autograd(_backward_vjp, setup_context=_setup_backward)
penalty_double_backward.register_autograd(_third_order, setup_context=lambda ctx, inputs, output: None)
