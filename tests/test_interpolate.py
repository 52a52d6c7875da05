"""gpkernels.interpolate on every backend against the float64 reference: values, gradients w.r.t. real,
fake and alpha, the double backward, layouts, and drawing alpha."""

import pytest
import torch

import gpkernels
from _cases import CASES, case_id, make
from conftest import BACKEND_DEVICES, FUSED_BACKEND_DEVICES, assert_close_to_truth, require

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def run(backend, real, fake, alpha, up, v):
    """x, the gradients (real, fake, alpha) for upstream `up`, and the double-backward products."""
    r, f, a = (t.detach().requires_grad_() for t in (real, fake, alpha))
    x = gpkernels.interpolate(r, f, a, backend=backend)
    grads = torch.autograd.grad(x, (r, f, a), up, create_graph=True)
    # d/d up of <v, grads>: exercises interp_backward's own backward.
    second = torch.autograd.grad(grads, (r, f, a), (v, -v, a.detach() + 1), allow_unused=True)
    second = [torch.zeros_like(t) if s is None else s for s, t in zip(second, (r, f, a))]
    return (x, *grads, *second)


@pytest.mark.parametrize("backend,device", FUSED_BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_against_reference(backend, device, dtype, case):
    require(backend, device)
    real = make(*case, dtype, device)
    fake = make(*case, dtype, device)
    alpha = torch.rand(real.shape[0], device=device).to(dtype)
    up = make(*case, dtype, device)
    v = make(*case, dtype, device)
    fused = run(backend, real, fake, alpha, up, v)
    ref = run("reference", real, fake, alpha, up, v)
    truth = run("reference", real.double(), fake.double(), alpha.double(), up.double(), v.double())
    for f, r, t in zip(fused, ref, truth):
        assert f.dtype == r.dtype and f.shape == r.shape
        assert_close_to_truth(f, r, t, dtype)
    x = fused[0]
    if real.dim() == 4 and real.is_contiguous(memory_format=torch.channels_last):
        assert x.is_contiguous(memory_format=torch.channels_last), "x keeps the inputs' layout"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_gradcheck_and_gradgradcheck(backend, device):
    require(backend, device)
    real = torch.randn(3, 2, 4, dtype=torch.float64, device=device, requires_grad=True)
    fake = torch.randn(3, 2, 4, dtype=torch.float64, device=device, requires_grad=True)
    alpha = torch.rand(3, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda r, f, a: gpkernels.interpolate(r, f, a, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (real, fake, alpha))
    assert torch.autograd.gradgradcheck(fn, (real, fake, alpha))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_alpha_drawn_per_sample_from_the_generator(backend, device):
    require(backend, device)
    real = torch.ones(500, 3, 2, device=device)
    fake = torch.zeros(500, 3, 2, device=device)
    x1 = gpkernels.interpolate(real, fake, generator=torch.Generator(device).manual_seed(7), backend=backend)
    x2 = gpkernels.interpolate(real, fake, generator=torch.Generator(device).manual_seed(7), backend=backend)
    assert torch.equal(x1, x2), "the same generator state gives the same points"
    alpha = x1[:, 0, 0]
    # With real = 1 and fake = 0, x equals alpha everywhere in its sample: one alpha per sample.
    assert torch.equal(x1, alpha[:, None, None].expand_as(x1))
    assert alpha.min() >= 0 and alpha.max() < 1
    assert len(torch.unique(alpha)) > 450, "alpha differs between samples"
    assert 0.4 < alpha.mean().item() < 0.6


def test_alpha_of_shape_b111_is_accepted_and_broadcast():
    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    alpha = torch.rand(4, 1, 1, 1, requires_grad=True)
    x = gpkernels.interpolate(real, fake, alpha)
    torch.testing.assert_close(x, alpha * real + (1 - alpha) * fake)
    x.sum().backward()
    assert alpha.grad.shape == (4, 1, 1, 1)


def test_inputs_are_not_modified():
    real, fake = torch.randn(4, 5), torch.randn(4, 5)
    r0, f0 = real.clone(), fake.clone()
    gpkernels.interpolate(real, fake)
    assert torch.equal(real, r0) and torch.equal(fake, f0)
