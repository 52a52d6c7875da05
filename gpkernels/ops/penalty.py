"""The gradient-penalty ops: Triton op definitions, fake (meta) implementations for the compiled ops
(torch.ops.gpkernels, csrc/ops.cpp) and the Triton ops (torch.ops.gpkernels_triton), and the Triton ops'
autograd (the compiled ops carry the same derivatives in C++, csrc/autograd.cpp).
Reference: gpkernels.reference.penalty_terms.

Per sample i (g_i flattened, s = inv_scale, t = target, w = weight; csrc/common/penalty_math.h):
    penalty_forward:          norms_i = s ||g_i||, values_i = w d_i^2, d_i = norms_i - t (one-sided: max(0, .))
    penalty_backward:         dgrads_i = gv_i c_i g_i,  c_i = 2 w s d_i / ||g_i||     (gv: gradient of values)
    penalty_double_backward:  for V (the gradient reaching dgrads):
                              d gv_i = c_i <g_i, V_i>,  d g_i = gv_i (c_i V_i + k_i <g_i, V_i> g_i),
                              k_i = 2 w s t / ||g_i||^3
penalty_backward takes the forward's norms as an input instead of stashing intermediates; its own
derivative is the full derivative in g (the k term accounts for the norms' dependence on g), so the norms
get no gradient there, and they are a non-differentiable output of penalty_forward.
"""

import torch

from .. import _checks
from . import _layout


def _triton():
    from .. import _triton_kernels

    return _triton_kernels


def _scalars(where, target, weight, inv_scale):
    _checks.finite_number(where, "target", target)
    _checks.finite_number(where, "weight", weight)
    _checks.finite_number(where, "inv_scale", inv_scale, strict=True)


@torch.library.custom_op("gpkernels_triton::penalty_forward", mutates_args=())
def triton_penalty_forward(grads: torch.Tensor, target: float, one_sided: bool, weight: float,
                           inv_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """grads: (B, *). Returns (values (B,), norms (B,)) in the accumulation dtype."""
    where = "gpkernels_triton::penalty_forward"
    _checks.samples(where, "grads", grads)
    _scalars(where, target, weight, inv_scale)
    return _triton().penalty_forward(_layout.matrix(_layout.as_rows(grads)), target, one_sided, weight, inv_scale)


@torch.library.custom_op("gpkernels_triton::penalty_backward", mutates_args=())
def triton_penalty_backward(grad_values: torch.Tensor, grads: torch.Tensor, norms: torch.Tensor, target: float,
                            one_sided: bool, weight: float, inv_scale: float) -> torch.Tensor:
    """grad_values, norms: (B,) accumulation dtype; grads: (B, *). Returns dgrads (B, *)."""
    where = "gpkernels_triton::penalty_backward"
    _checks.samples(where, "grads", grads)
    acc = _layout.accum_dtype(grads.dtype)
    _checks.per_sample(where, "grad_values", grad_values, grads, acc)
    _checks.per_sample(where, "norms", norms, grads, acc)
    _scalars(where, target, weight, inv_scale)
    g = _layout.as_rows(grads)
    dgrads = _triton().penalty_backward(grad_values.contiguous(), _layout.matrix(g), norms.contiguous(), target,
                                        one_sided, weight, inv_scale)
    return _layout.unmatrix(dgrads, g)


@torch.library.custom_op("gpkernels_triton::penalty_double_backward", mutates_args=())
def triton_penalty_double_backward(v: torch.Tensor, grad_values: torch.Tensor, grads: torch.Tensor, target: float,
                                   one_sided: bool, weight: float,
                                   inv_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v, grads: (B, *); grad_values: (B,). Returns (d_grad_values (B,), d_grads (B, *))."""
    where = "gpkernels_triton::penalty_double_backward"
    _checks.samples(where, "grads", grads)
    _checks.same_as(where, "v", v, "grads", grads)
    _checks.per_sample(where, "grad_values", grad_values, grads, _layout.accum_dtype(grads.dtype))
    _scalars(where, target, weight, inv_scale)
    g = _layout.as_rows(grads)
    d_gv, d_g = _triton().penalty_double_backward(_layout.matrix(_layout.rows_like(v, g)), grad_values.contiguous(),
                                                  _layout.matrix(g), target, one_sided, weight, inv_scale)
    return d_gv, _layout.unmatrix(d_g, g)


def _fake_forward(grads, target, one_sided, weight, inv_scale):
    acc = _layout.accum_dtype(grads.dtype)
    return grads.new_empty(grads.shape[0], dtype=acc), grads.new_empty(grads.shape[0], dtype=acc)


def _fake_backward(grad_values, grads, norms, target, one_sided, weight, inv_scale):
    return _layout.empty_rows_like(grads)


def _fake_double_backward(v, grad_values, grads, target, one_sided, weight, inv_scale):
    return grad_values.new_empty(grads.shape[0]), _layout.empty_rows_like(grads)


def _setup_forward(ctx, inputs, output):
    grads, *scalars = inputs
    values, norms = output
    ctx.mark_non_differentiable(norms)
    ctx.save_for_backward(grads, norms)
    ctx.scalars = scalars


def _setup_backward(ctx, inputs, output):
    grad_values, grads, norms, *scalars = inputs
    ctx.save_for_backward(grad_values, grads)
    ctx.scalars = scalars


def _third_order(ctx, *grads):
    raise NotImplementedError(
        "gpkernels: the fused penalty is differentiable twice (double backward); a third derivative is not "
        "implemented. Use backend='reference' for higher orders.")


def _autograd(ops):
    def forward_vjp(ctx, grad_values, grad_norms):
        grads, norms = ctx.saved_tensors
        return (ops.penalty_backward(grad_values, grads, norms, *ctx.scalars),) + (None,) * 4

    def backward_vjp(ctx, v):
        grad_values, grads = ctx.saved_tensors
        d_gv, d_g = ops.penalty_double_backward(v, grad_values, grads, *ctx.scalars)
        return (d_gv, d_g) + (None,) * 5

    return forward_vjp, backward_vjp


def register(namespace, autograd):
    """Fake implementations (and, with autograd=True, Python autograd) for the penalty ops of `namespace`."""
    torch.library.register_fake(f"{namespace}::penalty_forward", _fake_forward)
    torch.library.register_fake(f"{namespace}::penalty_backward", _fake_backward)
    torch.library.register_fake(f"{namespace}::penalty_double_backward", _fake_double_backward)
    if not autograd:
        return
    forward_vjp, backward_vjp = _autograd(getattr(torch.ops, namespace))
    torch.library.register_autograd(f"{namespace}::penalty_forward", forward_vjp, setup_context=_setup_forward)
    torch.library.register_autograd(f"{namespace}::penalty_backward", backward_vjp, setup_context=_setup_backward)
    torch.library.register_autograd(f"{namespace}::penalty_double_backward", _third_order,
                                    setup_context=lambda ctx, inputs, output: None)
