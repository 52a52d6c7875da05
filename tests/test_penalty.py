"""gpkernels.penalty on every backend against the float64 reference: values, norms, gradients and the
double backward; gradcheck and gradgradcheck in float64; the zero-gradient case."""

import pytest
import torch

import gpkernels
from _cases import CASES, case_id, make
from conftest import BACKEND_DEVICES, FUSED_BACKEND_DEVICES, assert_close_to_truth, require

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

OPTIONS = [
    dict(),  # WGAN-GP with weight 1
    dict(target=1.0, one_sided=True, weight=10.0),  # WGAN-LP
    dict(target=0.0, weight=10.0, reduction="sum"),  # R1 / R2
    dict(target=0.0, one_sided=True),
    dict(target=0.5, one_sided=True, reduction="none"),
    dict(target=1.0, weight=10.0, inv_scale=1 / 1024, grad_scale=1024.0),  # AMP: scaled grads, fused unscale
    dict(target=2.0, weight=0.0),
]


def options_id(o):
    return "-".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.items()) or "default"


def run(backend, grads, upstream, v, opts):
    """loss, norms, d loss/d grads, and the double-backward product v^T d(dgrads)/d grads."""
    g = grads.detach().requires_grad_()
    loss, norms = gpkernels.penalty(g, return_norms=True, backend=backend, **opts)
    (dg,) = torch.autograd.grad(loss, g, upstream.to(loss.dtype).reshape(loss.shape), create_graph=True)
    (ddg,) = torch.autograd.grad(dg, g, v)
    return loss, norms, dg, ddg


def check_against_reference(backend, grads, opts):
    B = grads.shape[0]
    upstream = torch.rand(B, dtype=torch.float64, device=grads.device) + 0.5
    if opts.get("reduction", "mean") != "none":
        upstream = upstream[:1].reshape(())
    v = torch.randn(grads.shape, dtype=torch.float64, device=grads.device).to(grads.dtype)
    fused = run(backend, grads, upstream, v, opts)
    ref_same_dtype = run("reference", grads, upstream, v, opts)
    truth = run("reference", grads.double(), upstream, v.double(), opts)
    for name, f, r, t in zip(("loss", "norms", "grad", "double backward"), fused, ref_same_dtype, truth):
        assert f.dtype == r.dtype, name
        assert f.shape == r.shape, name
        assert_close_to_truth(f, r, t, grads.dtype)
    return fused


@pytest.mark.parametrize("backend,device", FUSED_BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_shapes_and_layouts(backend, device, dtype, case):
    require(backend, device)
    grads = make(*case, dtype, device, scale=0.5)
    _, _, dg, _ = check_against_reference(backend, grads, dict(reduction="none"))
    if grads.dim() == 4 and grads.is_contiguous(memory_format=torch.channels_last):
        assert dg.is_contiguous(memory_format=torch.channels_last), "the gradient keeps the input's layout"


@pytest.mark.parametrize("backend,device", FUSED_BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("opts", OPTIONS, ids=options_id)
def test_options(backend, device, dtype, opts):
    require(backend, device)
    opts = dict(opts)
    grads = make((6, 3, 5, 5), "contiguous", dtype, device, scale=opts.pop("grad_scale", 1.0) * 0.15)
    check_against_reference(backend, grads, opts)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("opts", OPTIONS, ids=options_id)
def test_gradcheck_and_gradgradcheck(backend, device, opts):
    require(backend, device)
    opts = dict(opts)
    g = (make((3, 2, 3), "contiguous", torch.float64, device) * 0.4 * opts.pop("grad_scale", 1.0))
    g.requires_grad_()
    fn = lambda x: gpkernels.penalty(x, backend=backend, **opts)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (g,))
    assert torch.autograd.gradgradcheck(fn, (g,))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("target,one_sided", [(1.0, False), (1.0, True), (0.0, False)])
def test_zero_gradient_rows_are_finite(backend, device, target, one_sided):
    """A sample whose gradient is exactly 0 has a finite value and a zero gradient (never NaN), and the
    double backward stays finite."""
    require(backend, device)
    g = torch.randn(3, 8, dtype=torch.float32, device=device)
    g[1] = 0
    g.requires_grad_()
    loss, norms = gpkernels.penalty(g, target=target, one_sided=one_sided, weight=10.0, backend=backend,
                                    return_norms=True)
    assert norms[1].item() == 0
    (dg,) = torch.autograd.grad(loss, g, create_graph=True)
    (ddg,) = torch.autograd.grad(dg, g, torch.ones_like(g))
    assert torch.isfinite(loss) and torch.isfinite(dg).all() and torch.isfinite(ddg).all()
    assert torch.all(dg[1] == 0)
    rest = gpkernels.penalty(g[[0, 2]].detach(), target=target, one_sided=one_sided, weight=10.0,
                             reduction="sum", backend="reference")
    torch.testing.assert_close(loss.detach().cpu(), ((rest + 10.0 * target**2 * (not one_sided)) / 3).cpu())
    if target == 0.0:
        # R1 is smooth at 0: its second derivative there is 2 w / B, exactly.
        torch.testing.assert_close(ddg[1].cpu(), torch.full((8,), 2 * 10.0 / 3))


@pytest.mark.parametrize("backend,device", FUSED_BACKEND_DEVICES)
def test_norms_are_detached_and_match_the_definition(backend, device):
    require(backend, device)
    g = torch.randn(4, 3, 2, 2, device=device, requires_grad=True)
    _, norms = gpkernels.penalty(g, return_norms=True, inv_scale=0.25, backend=backend)
    assert not norms.requires_grad
    torch.testing.assert_close(norms, 0.25 * g.detach().flatten(1).norm(dim=1))


@pytest.mark.parametrize("backend,device", FUSED_BACKEND_DEVICES)
def test_third_derivative_is_refused_clearly(backend, device):
    require(backend, device)
    g = torch.randn(2, 5, dtype=torch.float64, device=device, requires_grad=True)
    loss = gpkernels.penalty(g, backend=backend)
    (dg,) = torch.autograd.grad(loss, g, create_graph=True)
    (ddg,) = torch.autograd.grad(dg.sum(), g, create_graph=True)
    with pytest.raises(NotImplementedError, match="differentiable twice"):
        torch.autograd.grad(ddg.sum(), g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_result_dtype_is_the_accumulation_dtype(dtype):
    g = torch.randn(4, 9).to(dtype)
    loss, norms = gpkernels.penalty(g, return_norms=True)
    assert loss.dtype == norms.dtype == torch.float32
    assert gpkernels.penalty(g.double()).dtype == torch.float64
