"""The registered ops themselves: torch.library.opcheck (schema, fake tensors, autograd registration, AOT
dispatch) for both namespaces on each device their backends serve here, and torch.compile(fullgraph=True) of
first-order use."""

import pytest
import torch

import gpkernels
from gpkernels.backends import native
from gpkernels.backends import triton as triton_backend

NATIVE, TRITON = native.NAMESPACE, triton_backend.NAMESPACE

# (namespace, the backend that owns it, device): each op namespace on each device type its backend serves.
OWNER = {NATIVE: {"cpu": "cpu", "cuda": "cuda"}, TRITON: {"cpu": "triton", "cuda": "triton"}}
NAMESPACES = [pytest.param(ns, device, id=f"{'native' if ns == NATIVE else 'triton'}-{device}",
                           marks=[pytest.mark.gpu] if device == "cuda" else [])
              for ns in (NATIVE, TRITON) for device in ("cpu", "cuda")]


def skip_unless_served(namespace, device):
    reasons = gpkernels.backends.refusals(OWNER[namespace][device], device)
    if reasons:
        pytest.skip("; ".join(reasons))
# (target, one_sided, weight, inv_scale, exponent): the square path, and exponents p != 2 (W-div's p = 6).
SCALAR_SETS = [(1.0, False, 10.0, 1.0, 2.0), (1.0, True, 1.0, 0.5, 2.0), (0.0, False, 2.0, 1.0, 2.0),
               (1.0, True, 1.0, 0.5, 1.5), (0.0, False, 2.0, 1.0, 6.0)]


def op_samples(dtype, grad, device="cpu"):
    """(op name, args) pairs covering every op, in a contiguous and a channels_last layout."""
    out = []
    for shape, fmt in (((3, 5), torch.contiguous_format), ((2, 3, 4, 5), torch.channels_last)):
        mk = lambda: torch.randn(shape, dtype=dtype, device=device).to(  # noqa: E731
            memory_format=fmt).requires_grad_(grad)
        B = shape[0]
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        alpha = torch.rand(B, dtype=dtype, device=device).requires_grad_(grad)
        out.append(("interp", (mk(), mk(), alpha)))
        out.append(("interp_backward", (mk(), mk(), mk(), alpha)))
        for scalars in SCALAR_SETS:
            grads = mk()
            norms = grads.detach().reshape(B, -1).norm(dim=1).to(acc) * scalars[3]
            out.append(("penalty_forward", (grads, *scalars)))
            out.append(("penalty_backward", (torch.rand(B, dtype=acc).requires_grad_(grad), grads, norms,
                                             *scalars)))
            # Third derivatives are refused by design, so the double-backward op is checked without grad.
            out.append(("penalty_double_backward", (mk().detach(), torch.rand(B, dtype=acc), grads.detach(),
                                                    *scalars)))
    return out


@pytest.mark.parametrize("namespace,device", NAMESPACES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("grad", [True, False], ids=["requires_grad", "no_grad"])
def test_opcheck(namespace, device, dtype, grad):
    skip_unless_served(namespace, device)
    for name, args in op_samples(dtype, grad, device):
        op = getattr(getattr(torch.ops, namespace), name).default
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu"),
                                            pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
                                            pytest.param("triton", "cuda", marks=pytest.mark.gpu)])
def test_compile_fullgraph_first_order(backend, device):
    reasons = gpkernels.backends.refusals(backend, device)
    if reasons:
        pytest.skip("; ".join(reasons))

    def head(real, fake, alpha):
        x = gpkernels.interpolate(real, fake, alpha, backend=backend)
        return gpkernels.penalty(torch.tanh(x), weight=10.0, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(head, fullgraph=True)
    inputs = [torch.randn(8, 3, 4, 4, device=device, requires_grad=True),
              torch.randn(8, 3, 4, 4, device=device, requires_grad=True),
              torch.rand(8, device=device, requires_grad=True)]
    eager_loss = head(*inputs)
    eager_grads = torch.autograd.grad(eager_loss, inputs)
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)
