"""Bad input gives a clear error that names the argument; never a crash, a hang or a silent result."""

import pytest
import torch

import gpkernels
from conftest import BACKEND_DEVICES, require

x = torch.randn(4, 3)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("call,error,match", [
    (lambda b: gpkernels.interpolate(x, torch.randn(4, 4), backend=b), ValueError, "fake must have the shape"),
    (lambda b: gpkernels.interpolate(x, torch.randn(3, 3), backend=b), ValueError, "fake must have the shape"),
    (lambda b: gpkernels.interpolate(x, x.double(), backend=b), TypeError, "fake must have the dtype"),
    (lambda b: gpkernels.interpolate(x, x, torch.rand(3), backend=b), ValueError, "alpha must have shape"),
    (lambda b: gpkernels.interpolate(x, x, torch.rand(4, 2), backend=b), ValueError, "alpha must have shape"),
    (lambda b: gpkernels.interpolate(x, x, torch.ones(4, dtype=torch.int64), backend=b), TypeError,
     "alpha must be a floating"),
    (lambda b: gpkernels.interpolate(x, x, 0.5, backend=b), TypeError, "alpha must be a torch.Tensor"),
    (lambda b: gpkernels.interpolate(torch.ones(4, 3, dtype=torch.int32), torch.ones(4, 3, dtype=torch.int32),
                                     backend=b), TypeError, "real must be float32"),
    (lambda b: gpkernels.interpolate(torch.ones(4, 3, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool),
                                     backend=b), TypeError, "real must be float32"),
    (lambda b: gpkernels.interpolate(torch.randn(0, 3), torch.randn(0, 3), backend=b), ValueError, "empty batch"),
    (lambda b: gpkernels.interpolate(torch.tensor(1.0), torch.tensor(1.0), backend=b), ValueError,
     "batch dimension"),
    (lambda b: gpkernels.interpolate(x, x.to("meta"), backend=b), ValueError, "fake is on meta"),
    (lambda b: gpkernels.interpolate(x, x, torch.rand(4, device="meta"), backend=b), ValueError, "alpha is on meta"),
    (lambda b: gpkernels.penalty(torch.ones(4, 3, dtype=torch.int64), backend=b), TypeError, "grads must be"),
    (lambda b: gpkernels.penalty(torch.randn(0, 5), backend=b), ValueError, "empty batch"),
    (lambda b: gpkernels.penalty(x.numpy(), backend=b), TypeError, "grads must be a torch.Tensor"),
    (lambda b: gpkernels.penalty(x, target=-1.0, backend=b), ValueError, "target must be finite and >= 0"),
    (lambda b: gpkernels.penalty(x, target=float("nan"), backend=b), ValueError, "target must be finite"),
    (lambda b: gpkernels.penalty(x, weight=-10.0, backend=b), ValueError, "weight must be finite and >= 0"),
    (lambda b: gpkernels.penalty(x, weight=float("inf"), backend=b), ValueError, "weight must be finite"),
    (lambda b: gpkernels.penalty(x, weight="10", backend=b), TypeError, "weight must be a number"),
    (lambda b: gpkernels.penalty(x, inv_scale=0.0, backend=b), ValueError, "inv_scale must be finite and > 0"),
    (lambda b: gpkernels.penalty(x, inv_scale=torch.ones(2), backend=b), ValueError, "one-element tensor"),
    (lambda b: gpkernels.penalty(x, reduction="avg", backend=b), ValueError, "reduction must be one of"),
    (lambda b: gpkernels.penalty(x, one_sided="yes", backend=b), TypeError, "one_sided must be a bool"),
], ids=lambda v: None if callable(v) or isinstance(v, type) else v[:30])
def test_public_functions_reject_bad_input(backend, device, call, error, match):
    require(backend, device)
    with pytest.raises(error, match=match):
        call(backend)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'gpu'.*choose one of auto, reference, cpu, cuda, triton"):
        gpkernels.penalty(x, backend="gpu")


def test_explicit_backend_that_cannot_serve_the_input_raises_with_reasons():
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run cpu tensors: .*CUDA tensors only"):
        gpkernels.penalty(x, backend="cuda")


@pytest.mark.parametrize("op,args,match", [
    ("interp", (torch.randn(4, 3), torch.randn(4, 2), torch.rand(4)), "fake must have the shape"),
    ("interp", (torch.randn(4, 3), torch.randn(4, 3), torch.rand(3)), "alpha must have shape"),
    ("interp", (torch.randn(4, 3), torch.randn(4, 3), torch.rand(4).double()), "alpha must be"),
    ("penalty_forward", (torch.randn(0, 3), 1.0, False, 1.0, 1.0), "empty batch"),
    ("penalty_forward", (torch.randn(2, 3), -1.0, False, 1.0, 1.0), "target must be finite and >= 0"),
    ("penalty_forward", (torch.randn(2, 3), 1.0, False, 1.0, 0.0), "inv_scale must be finite and > 0"),
    ("penalty_backward", (torch.rand(3), torch.randn(2, 3), torch.rand(2), 1.0, False, 1.0, 1.0),
     "grad_values must have shape"),
    ("penalty_backward", (torch.rand(2).double(), torch.randn(2, 3), torch.rand(2), 1.0, False, 1.0, 1.0),
     "grad_values must be"),
    ("penalty_double_backward", (torch.randn(2, 4), torch.rand(2), torch.randn(2, 3), 1.0, False, 1.0, 1.0),
     "v must have the shape"),
])
@pytest.mark.parametrize("namespace", ["gpkernels", "gpkernels_triton"])
def test_ops_check_their_inputs_too(namespace, op, args, match):
    if namespace == "gpkernels" and not gpkernels.backends.native.LOADED:
        pytest.skip("extension not loaded")
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        getattr(getattr(torch.ops, namespace), op)(*args)
