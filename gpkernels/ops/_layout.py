"""Memory layout rules shared by the Triton ops and the fake (meta) implementations. They mirror
csrc/ops.cpp exactly, so that fake tensors have the strides the real kernels produce.

A tensor is "batch-outer dense" when every sample occupies one contiguous block of N = numel/B elements
(contiguous, channels_last, ...). Kernels take such tensors as they are; others are made contiguous.
"""

import torch

from ..reference import accum_dtype  # noqa: F401  (re-exported for the op modules)


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
