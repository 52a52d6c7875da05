"""Input builders shared by the op tests: shapes and memory layouts that exercise every path of the
kernels (direct batch-outer dense rows, and the copy to contiguous rows)."""

import torch

# (shape, layout): B = 1, N = 1, N prime, N >= 100k, 1-D, 2-D, 4-D, channels_last, permuted-inside-sample,
# strided (non-dense) and batch-innermost (dense but not batch-outer).
CASES = [
    ((1, 1), "contiguous"),
    ((1, 7), "contiguous"),
    ((6, 1), "contiguous"),
    ((5,), "contiguous"),
    ((3, 13), "contiguous"),
    ((2, 100003), "contiguous"),
    ((4, 3, 5, 7), "contiguous"),
    ((4, 3, 5, 7), "channels_last"),
    ((4, 3, 5, 7), "permuted"),
    ((4, 6), "strided"),
    ((5, 6), "batch_inner"),
]


def case_id(case):
    shape, layout = case
    return "x".join(map(str, shape)) + "-" + layout


def make(shape, layout, dtype, device, scale=1.0):
    """A random tensor of `shape` laid out as `layout` (values are the same for every layout)."""
    base = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
    if layout == "contiguous":
        out = base.clone()
    elif layout == "channels_last":
        out = base.to(memory_format=torch.channels_last)
    elif layout == "permuted":  # the inner dims reversed in memory; each sample still one block
        inner = list(range(base.dim() - 1, 0, -1))
        out = base.permute(0, *inner).contiguous().permute(0, *inner)
    elif layout == "strided":
        wide = torch.zeros(shape[0], shape[1] * 2, dtype=dtype)
        wide[:, ::2] = base
        out = wide[:, ::2]
    elif layout == "batch_inner":
        out = base.t().contiguous().t()
    else:
        raise ValueError(layout)
    assert torch.equal(out, base)
    return out.to(device)
