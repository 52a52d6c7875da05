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
    (lambda b: gpkernels.penalty(x, exponent=0.5, backend=b), ValueError, "exponent must be finite and >= 1"),
    (lambda b: gpkernels.penalty(x, exponent=float("nan"), backend=b), ValueError, "exponent must be finite"),
    (lambda b: gpkernels.penalty(x, exponent=float("inf"), backend=b), ValueError, "exponent must be finite"),
    (lambda b: gpkernels.penalty(x, exponent="2", backend=b), TypeError, "exponent must be a number"),
    (lambda b: gpkernels.penalty(x, exponent=None, backend=b), TypeError, "exponent must be a number"),
], ids=lambda v: None if callable(v) or isinstance(v, type) else v[:30])
def test_public_functions_reject_bad_input(backend, device, call, error, match):
    require(backend, device)
    with pytest.raises(error, match=match):
        call(backend)


def test_unknown_backend_is_named():
    names = ", ".join(("auto",) + gpkernels.backends.NAMES)
    with pytest.raises(ValueError, match=f"unknown backend 'gpu'.*choose one of {names}"):
        gpkernels.penalty(x, backend="gpu")


def test_explicit_backend_that_cannot_serve_the_input_raises_with_reasons():
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run cpu tensors: .*CUDA tensors only"):
        gpkernels.penalty(x, backend="cuda")


g23, v23, gv2 = torch.randn(2, 3), torch.randn(2, 3), torch.rand(2)
i23 = torch.ones(2, 3, dtype=torch.int64)


# The compiled ops (torch.ops.gpkernels, csrc/ops.cpp) and the Triton ops raise what the public functions raise:
# TypeError for a dtype, ValueError for a shape, batch, device or value, named "<namespace>::<op>: <argument> ...".
@pytest.mark.parametrize("op,args,error,match", [
    ("interp", (torch.randn(4, 3), torch.randn(4, 2), torch.rand(4)), ValueError, "fake must have the shape"),
    ("interp", (torch.randn(4, 3), torch.randn(4, 3), torch.rand(3)), ValueError, "alpha must have shape"),
    ("interp", (torch.randn(4, 3), torch.randn(4, 3), torch.rand(4).double()), TypeError, "alpha must be"),
    ("interp", (i23, i23, gv2), TypeError, "real must be float32, float64, float16 or bfloat16"),
    ("interp_backward", (g23, v23, v23.double(), gv2), TypeError, "fake must have the dtype of grad"),
    ("interp_backward", (g23, torch.randn(3, 3), v23, gv2), ValueError, "real must have the shape of grad"),
    ("penalty_forward", (torch.randn(0, 3), 1.0, False, 1.0, 1.0, 2.0), ValueError, "grads has an empty batch"),
    ("penalty_forward", (torch.tensor(1.0), 1.0, False, 1.0, 1.0, 2.0), ValueError,
     "grads must have a batch dimension"),
    ("penalty_forward", (i23, 1.0, False, 1.0, 1.0, 2.0), TypeError,
     "grads must be float32, float64, float16 or bfloat16"),
    ("penalty_forward", (g23, -1.0, False, 1.0, 1.0, 2.0), ValueError, "target must be finite and >= 0"),
    ("penalty_forward", (g23, float("nan"), False, 1.0, 1.0, 2.0), ValueError, "target must be finite"),
    ("penalty_forward", (g23, 1.0, False, -10.0, 1.0, 2.0), ValueError, "weight must be finite and >= 0"),
    ("penalty_forward", (g23, 1.0, False, float("inf"), 1.0, 2.0), ValueError, "weight must be finite"),
    ("penalty_forward", (g23, 1.0, False, 1.0, 0.0, 2.0), ValueError, "inv_scale must be finite and > 0"),
    ("penalty_backward", (torch.rand(3), g23, gv2, 1.0, False, 1.0, 1.0, 2.0), ValueError,
     "grad_values must have shape"),
    ("penalty_backward", (gv2.double(), g23, gv2, 1.0, False, 1.0, 1.0, 2.0), TypeError, "grad_values must be"),
    ("penalty_backward", (gv2, g23, gv2.half(), 1.0, False, 1.0, 1.0, 2.0), TypeError, "norms must be"),
    ("penalty_backward", (gv2, i23, gv2, 1.0, False, 1.0, 1.0, 2.0), TypeError, "grads must be float32"),
    ("penalty_double_backward", (torch.randn(2, 4), gv2, g23, 1.0, False, 1.0, 1.0, 2.0), ValueError,
     "v must have the shape of grads"),
    ("penalty_double_backward", (v23.double(), gv2, g23, 1.0, False, 1.0, 1.0, 2.0), TypeError,
     "v must have the dtype of grads"),
    ("penalty_double_backward", (v23, gv2.double(), g23, 1.0, False, 1.0, 1.0, 2.0), TypeError, "grad_values must be"),
    ("penalty_forward", (g23, 1.0, False, 1.0, 1.0, 0.5), ValueError, "exponent must be finite and >= 1"),
    ("penalty_forward", (g23, 1.0, False, 1.0, 1.0, float("nan")), ValueError, "exponent must be finite"),
    ("penalty_forward", (g23, 1.0, False, 1.0, 1.0, float("inf")), ValueError, "exponent must be finite"),
])
@pytest.mark.parametrize("namespace", ["gpkernels", "gpkernels_triton"])
def test_ops_check_their_inputs_too(namespace, op, args, error, match):
    if namespace == "gpkernels" and not gpkernels.backends.native.LOADED:
        pytest.skip("extension not loaded")
    with pytest.raises(error, match=f"{namespace}::{op}: {match}"):
        getattr(getattr(torch.ops, namespace), op)(*args)


@pytest.mark.parametrize("op,args", [
    ("penalty_backward", (gv2, g23, gv2, -1.0, False, float("nan"), 0.0, 0.5)),
    ("penalty_double_backward", (v23, gv2, g23, -1.0, False, float("nan"), 0.0, float("nan"))),
])
@pytest.mark.parametrize("namespace", ["gpkernels", "gpkernels_triton"])
def test_derivative_ops_take_the_scalars_the_forward_checked(namespace, op, args):
    """penalty_forward checks the scalars for the whole derivative chain; the backward ops of both namespaces
    take them as given (a bad one gives bad numbers, never an out-of-bounds access) and check only their
    tensors."""
    reasons = gpkernels.backends.refusals("cpu" if namespace == "gpkernels" else "triton", "cpu")
    if reasons:
        pytest.skip("; ".join(reasons))
    out = getattr(getattr(torch.ops, namespace), op)(*args)
    assert all(o.shape[0] == 2 for o in (out if isinstance(out, tuple) else (out,)))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_a_sparse_tensor_is_named(backend, device):
    require(backend, device)
    g = torch.randn(4, 3, device=device)
    with pytest.raises(TypeError, match="gpkernels.penalty: grads must be a dense \\(strided\\) tensor, got layout "
                                        "torch.sparse_coo"):
        gpkernels.penalty(g.to_sparse(), backend=backend)
    with pytest.raises(TypeError, match="gpkernels.interpolate: real must be a dense"):
        gpkernels.interpolate(g.to_sparse(), g.to_sparse(), backend=backend)


def test_a_generator_on_another_device_is_named():
    """Samples on the meta device with a CPU generator (torch itself says "META device type not an
    accelerator" deep inside torch.rand)."""
    g = torch.randn(4, 3, device="meta")
    cpu_gen = torch.Generator()
    with pytest.raises(ValueError, match="gpkernels.interpolate: generator is on cpu but the samples are on meta"):
        gpkernels.interpolate(g, g, generator=cpu_gen)
    critic = torch.nn.Linear(3, 1).to("meta")
    with pytest.raises(ValueError, match="gpkernels.gradient_penalty: generator is on cpu but the samples are on "
                                         "meta"):
        gpkernels.gradient_penalty(critic, g, g, generator=cpu_gen)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        gpkernels.gradient_penalty(critic, g, g, generator=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("kwargs,match", [
    (dict(inv_scale=1e39), "inv_scale=1e\\+39 is beyond float32's range"),
    (dict(weight=1e39, one_sided=True), "weight=1e\\+39 is beyond float32's range"),
    (dict(target=1e-40), "target=1e-40 is below float32's smallest normal"),
])
def test_scalars_beyond_the_accumulation_range_are_refused(backend, device, kwargs, match):
    require(backend, device)
    with pytest.raises(ValueError, match=match):
        gpkernels.penalty(torch.zeros(2, 3, device=device), backend=backend, **kwargs)
    # float64 gradients hold them.
    assert torch.isfinite(gpkernels.penalty(torch.ones(2, 3, device=device, dtype=torch.float64), backend=backend,
                                            **kwargs))
