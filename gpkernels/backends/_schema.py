"""What the fused ops return, whichever backend runs them: the memory-layout rules (mirroring csrc/ops.cpp
exactly) and the fake (meta) implementations registered for both op namespaces, torch.ops.gpkernels
(compiled) and torch.ops.gpkernels_triton, which share their schemas.

A tensor is "batch-outer dense" when every sample occupies one contiguous block of N = numel/B elements
(contiguous, channels_last, ...). Kernels take such tensors as they are; others are made contiguous. Outputs
of sample-shaped results have the layout of the (row) input.
"""

import torch

from ..reference import accum_dtype


def batch_outer_dense(t):
    """The dims of size > 1, taken from the smallest stride up, form a contiguous layout, and the batch
    dim (if of size > 1) is the outermost of them. Same rule as csrc/ops.cpp."""
    if t.numel() == 0:
        return True
    dims = [(t.stride(d), d) for d in range(t.dim()) if t.shape[d] != 1]
    dims.sort(key=lambda sd: sd[0])
    expected = 1
    for stride, d in dims:
        if stride != expected:
            return False
        expected *= t.shape[d]
    return t.shape[0] == 1 or dims[-1][1] == 0


def as_rows(t):
    return t if batch_outer_dense(t) else t.contiguous()


def rows_like(t, ref):
    """t with exactly the sizes and strides of ref (a tensor that as_rows returned)."""
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


def empty_rows_like(t):
    """The output a kernel writes for row input t: t's layout when batch-outer dense, else contiguous."""
    return torch.empty_like(t) if batch_outer_dense(t) else t.new_empty(t.shape)


def matrix(t):
    """The (B, N) contiguous view of a batch-outer dense tensor's memory."""
    B = t.shape[0]
    N = t.numel() // B if B else 0
    return t.as_strided((B, N), (N, 1))


def unmatrix(m, ref):
    """A fresh (B, N) contiguous result viewed with the sizes and strides of ref (batch-outer dense)."""
    return m.as_strided(ref.shape, ref.stride())


# ------------------------------------------------------------------------------------- fake tensors

def _fake_interp(real, fake, alpha):
    return empty_rows_like(real)


def _fake_interp_backward(grad, real, fake, alpha):
    return empty_rows_like(grad), empty_rows_like(grad), alpha.new_empty(grad.shape[0])


def _fake_penalty_forward(grads, target, one_sided, weight, inv_scale, exponent):
    acc = accum_dtype(grads.dtype)
    return grads.new_empty(grads.shape[0], dtype=acc), grads.new_empty(grads.shape[0], dtype=acc)


def _fake_penalty_backward(grad_values, grads, norms, target, one_sided, weight, inv_scale, exponent):
    return empty_rows_like(grads)


def _fake_penalty_double_backward(v, grad_values, grads, target, one_sided, weight, inv_scale, exponent):
    return grad_values.new_empty(grads.shape[0]), empty_rows_like(grads)


FAKES = {
    "interp": _fake_interp,
    "interp_backward": _fake_interp_backward,
    "penalty_forward": _fake_penalty_forward,
    "penalty_backward": _fake_penalty_backward,
    "penalty_double_backward": _fake_penalty_double_backward,
}


def register_fakes(namespace):
    """Fake implementations of every op of `namespace` (for torch.compile, FakeTensor, opcheck)."""
    for op, fn in FAKES.items():
        torch.library.register_fake(f"{namespace}::{op}", fn)
