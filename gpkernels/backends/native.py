"""The "cpu" and "cuda" backends: the compiled extension gpkernels._C (csrc/). Its ops are
torch.ops.gpkernels.* with their schemas, kernels and autograd in C++ (csrc/ops.cpp, csrc/autograd.cpp);
this module loads it, registers the ops' fake implementations and declares the two backends.

If the extension is missing or does not load (not built, built against another torch), gpkernels still
works on the reference and Triton backends and says why, once, at import. The "cuda" backend also refuses a
GPU that the build carries no kernel image for (cuda_arch_refusal), so that `auto` runs Triton there instead
of failing at the first launch with "no kernel image is available".
"""

import re
import warnings

import torch

from . import Backend, _schema, register

NAMESPACE = "gpkernels"
LOAD_ERROR = None
WITH_CUDA = False
CUDA_ARCHS = ""      # nvcc's __CUDA_ARCH_LIST__ for the .cu file, e.g. "800,900"
CUDA_SASS = None     # compute capabilities the CUDA kernels carry machine code for, e.g. ("80", "90"); None: unknown
CUDA_PTX = None      # those they carry PTX for, e.g. ("90",), compiled by the driver for any newer GPU; None: unknown
BUILT_TORCH = ""     # the torch version whose headers the extension was compiled against

try:
    from gpkernels import _C  # noqa: F401  (importing registers the ops)

    WITH_CUDA = bool(_C.with_cuda)
    CUDA_ARCHS = str(_C.cuda_archs)
    if WITH_CUDA and getattr(_C, "cuda_sass", None) is not None:
        CUDA_SASS = tuple(a for a in _C.cuda_sass.split(",") if a)
        CUDA_PTX = tuple(a for a in _C.cuda_ptx.split(",") if a)
    BUILT_TORCH = str(getattr(_C, "torch_version", ""))
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


def _arch(code):
    """A compute capability code as nvcc writes it -> (major, minor, suffix): "86" -> (8, 6, ""),
    "90a" -> (9, 0, "a"), "120f" -> (12, 0, "f")."""
    m = re.fullmatch(r"(\d+)(\d)([a-z]?)", code)
    if m is None:
        raise ValueError(f"not a compute capability code: {code!r}")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _runs_sass(code, major, minor):
    a, b, suffix = _arch(code)
    # sm_XY runs on X.Z for Z >= Y; arch-specific sm_XYa on X.Y only.
    return a == major and (b == minor if suffix == "a" else b <= minor)


def _runs_ptx(code, major, minor):
    a, b, suffix = _arch(code)
    # compute_XY is compiled by the driver for X.Y and every newer GPU; compute_XYa for X.Y only, compute_XYf
    # for the newer GPUs of the same major only.
    if suffix == "a":
        return (a, b) == (major, minor)
    if suffix == "f":
        return a == major and b <= minor
    return (a, b) <= (major, minor)


def describe_archs(sass, ptx):
    """'SASS sm_80 sm_90, PTX compute_90' for the codes of a build."""
    return (f"SASS {' '.join('sm_' + a for a in sass) or '(none)'}, "
            f"PTX {' '.join('compute_' + a for a in ptx) or '(none)'}")


def cuda_arch_refusal(capability, sass, ptx):
    """Why CUDA kernels that carry machine code (SASS) for the compute capability codes `sass` and PTX for
    `ptx` (as nvcc writes them: "80", "90a") cannot run on a GPU of compute capability `capability` (major,
    minor), or None when they can: it needs a SASS of its major with a minor <= its own, or a PTX <= its
    capability (which the driver compiles for it)."""
    major, minor = capability
    if any(_runs_sass(a, major, minor) for a in sass) or any(_runs_ptx(a, major, minor) for a in ptx):
        return None
    return (f"the build carries no kernel image for this GPU (compute capability {major}.{minor}; the build has "
            f"{describe_archs(sass, ptx)}): rebuild with TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\" (or with it "
            f"added to the list)")


def _cuda_refusals(device):
    reasons = _not_loaded()
    if LOADED and not WITH_CUDA:
        reasons.append("the extension was built without CUDA kernels")
    if device.type != "cuda":
        reasons.append(f"it runs CUDA tensors only, got {device.type} tensors")
    elif LOADED and WITH_CUDA and CUDA_SASS is not None and torch.cuda.is_available():
        # The capability torch.cuda.get_device_capability(device) returns, read from get_device_properties:
        # torch.compile (2.11 to 2.14) constant-folds that and is_available; get_device_capability is not on its
        # constant-fold list.
        props = torch.cuda.get_device_properties(device)
        reason = cuda_arch_refusal((props.major, props.minor), CUDA_SASS, CUDA_PTX)
        if reason:
            reasons.append(reason)
    return reasons


def _interpolate(real, fake, alpha):
    return torch.ops.gpkernels.interp(real, fake, alpha)


def _penalty_terms(grads, target, one_sided, weight, inv_scale, exponent):
    return torch.ops.gpkernels.penalty_forward(grads, target, one_sided, weight, inv_scale, exponent)


CPU = register(Backend(name="cpu", device_types=("cpu",), refusals=_cpu_refusals, auto_rank={"cpu": 0}.get,
                       interpolate=_interpolate, penalty_terms=_penalty_terms))
CUDA = register(Backend(name="cuda", device_types=("cuda",), refusals=_cuda_refusals, auto_rank={"cuda": 0}.get,
                        interpolate=_interpolate, penalty_terms=_penalty_terms))
