"""Paths of the CUDA kernels that only a GPU runs (skipped without one): short rows in large batches take
one warp per row (row_warp_kernel) and must give bit for bit what the block-per-chunk path gives; the
elementwise passes move 16-byte packs where every pointer is 16-byte aligned and go element by element
otherwise, with the same results."""

import pytest
import torch

import gpkernels
from conftest import require

pytestmark = pytest.mark.gpu


def run(g, v, up, **opts):
    """values, norms, gradient and double backward of the penalty of g (used as it is: a view stays a view)."""
    g = g.detach().requires_grad_()
    values, norms = gpkernels.penalty(g, reduction="none", return_norms=True, backend="cuda", **opts)
    (dg,) = torch.autograd.grad(values, g, up, create_graph=True)
    (hv,) = torch.autograd.grad(dg, g, v)
    return values.detach(), norms, dg.detach(), hv


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("N", [1, 37, 256])
def test_warp_per_row_is_bitwise_the_block_path(dtype, N):
    require("cuda", "cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    B = 64 * sms + 3  # one warp per row from 64 rows per SM on
    g = (torch.randn(B, N, device="cuda", dtype=torch.float64) * 0.3).to(dtype)
    v = torch.randn(B, N, device="cuda", dtype=torch.float64).to(dtype)
    up = torch.rand(B, device="cuda", dtype=torch.float64 if dtype == torch.float64 else torch.float32) + 0.5
    for opts in (dict(), dict(target=0.0, weight=10.0), dict(exponent=6.0, one_sided=True)):
        whole = run(g, v, up, **opts)
        parts = [run(g[i:i + 500], v[i:i + 500], up[i:i + 500], **opts) for i in range(0, B, 500)]  # block path
        for x, y in zip(whole, zip(*parts)):
            assert torch.equal(x, torch.cat(y)), opts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("N", [3, 1000])
def test_vector_and_scalar_elementwise_passes_agree(dtype, N):
    """The same rows 16-byte aligned (packs) and one element off (a view with a storage offset: element by
    element) give the same bits: interpolate, the penalty's backward and its double backward."""
    require("cuda", "cuda")
    B = 33

    def shifted(seed):  # (B, N), one element past the start of a fresh (aligned) allocation
        gen = torch.Generator(device="cuda").manual_seed(seed)
        flat = torch.randn(B * N + 1, device="cuda", dtype=torch.float64, generator=gen).to(dtype)
        return flat[1:].view(B, N)

    g, v, real, fake = shifted(0), shifted(1), shifted(2), shifted(3)
    assert g.data_ptr() % 16 != 0
    up = torch.rand(B, device="cuda", dtype=torch.float64 if dtype == torch.float64 else torch.float32) + 0.5
    for x, y in zip(run(g, v, up), run(g.clone(), v.clone(), up)):
        assert torch.equal(x, y)
    alpha = torch.rand(B, device="cuda", dtype=dtype)
    assert torch.equal(gpkernels.interpolate(real, fake, alpha, backend="cuda"),
                       gpkernels.interpolate(real.clone(), fake.clone(), alpha, backend="cuda"))
