"""The "cpu" and "cuda" backends: the compiled extension gpkernels._C (csrc/). Its ops are
torch.ops.gpkernels.* with their schemas, kernels and autograd in C++ (csrc/ops.cpp, csrc/autograd.cpp);
this module loads it, registers the ops' fake implementations and declares the two backends.

If the extension is missing or does not load (not built, built against another torch), gpkernels still
works on the reference and Triton backends and says why, once, at import.
"""

import warnings

import torch

from . import Backend, _schema, register

NAMESPACE = "gpkernels"
LOAD_ERROR = None
WITH_CUDA = False
CUDA_ARCHS = ""

try:
    from gpkernels import _C  # noqa: F401  (importing registers the ops)

    WITH_CUDA = bool(_C.with_cuda)
    CUDA_ARCHS = str(_C.cuda_archs)
except (ImportError, OSError, RuntimeError) as exc:
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "gpkernels: the compiled extension gpkernels._C could not be loaded "
        f"({LOAD_ERROR}); the 'cpu' and 'cuda' backends are unavailable and CPU tensors use the "
        "'reference' backend. Build it with `python setup.py build_ext --inplace` or "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

LOADED = LOAD_ERROR is None
if LOADED:
    _schema.register_fakes(NAMESPACE)


def _not_loaded():
    # Read at call time (not import time), so that a test can simulate a missing extension.
    return [] if LOADED else [f"the compiled extension is not loaded ({LOAD_ERROR})"]


def _cpu_refusals(device):
    reasons = _not_loaded()
    if device.type != "cpu":
        reasons.append(f"it runs CPU tensors only, got {device.type} tensors")
    return reasons


def _cuda_refusals(device):
    reasons = _not_loaded()
    if LOADED and not WITH_CUDA:
        reasons.append("the extension was built without CUDA kernels")
    if device.type != "cuda":
        reasons.append(f"it runs CUDA tensors only, got {device.type} tensors")
    return reasons


def _interpolate(real, fake, alpha):
    return torch.ops.gpkernels.interp(real, fake, alpha)


def _penalty_terms(grads, target, one_sided, weight, inv_scale, exponent):
    return torch.ops.gpkernels.penalty_forward(grads, target, one_sided, weight, inv_scale, exponent)


CPU = register(Backend(name="cpu", device_types=("cpu",), refusals=_cpu_refusals, auto_rank={"cpu": 0}.get,
                       interpolate=_interpolate, penalty_terms=_penalty_terms))
CUDA = register(Backend(name="cuda", device_types=("cuda",), refusals=_cuda_refusals, auto_rank={"cuda": 0}.get,
                        interpolate=_interpolate, penalty_terms=_penalty_terms))
