"""The "triton" backend: Triton kernels for CUDA tensors, or for CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1 set before gpkernels is imported).

    _kernels.py   the shared @triton.jit kernels and helpers, launch planning and launchers
    interp.py     torch.ops.gpkernels_triton.interp / interp_backward: launch sequence, op, autograd
    penalty.py    torch.ops.gpkernels_triton.penalty_*: launch sequence, ops, autograd

The ops are defined (and their fakes registered) whether or not triton is installed; triton itself is
imported at the first launch, since it reads TRITON_INTERPRET when the kernels are defined.
"""

import importlib.metadata
import importlib.util
import os
import sys

import torch

from .. import Backend, _schema, register

NAMESPACE = "gpkernels_triton"


def interpreted():
    """Whether the Triton kernels run on the CPU: they were loaded under TRITON_INTERPRET=1, or, not loaded
    yet, will be."""
    loaded = sys.modules.get(__name__ + "._kernels")
    if loaded is not None:
        return loaded.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _version(package):
    try:
        return tuple(int(x) for x in importlib.metadata.version(package).split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


# Looked up once: a refusal is asked on every call (and torch.compile cannot trace find_spec).
INSTALLED = importlib.util.find_spec("triton") is not None
# Triton's interpreter before 3.7 converts one-element numpy arrays with int(), which numpy 2.4 refuses
# ("only 0-dimensional arrays can be converted to Python scalars") in every loop over a row.
_TRITON, _NUMPY = _version("triton"), _version("numpy")
INTERPRETER_BROKEN = (_TRITON is not None and _TRITON < (3, 7) and _NUMPY is not None and _NUMPY >= (2, 4))


def _refusals(device):
    reasons = []
    if not INSTALLED:
        reasons.append("triton is not installed")
    if device.type == "cpu":
        if not interpreted():
            reasons.append("CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                           "gpkernels")
        elif INTERPRETER_BROKEN:
            reasons.append(f"Triton {'.'.join(map(str, _TRITON))}'s interpreter fails with numpy "
                           f"{'.'.join(map(str, _NUMPY))} (numpy < 2.4, or triton >= 3.7, works)")
    elif device.type != "cuda":
        reasons.append(f"it runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device.type}")
    return reasons


from . import interp, penalty  # noqa: E402,F401  (defines the ops)

_schema.register_fakes(NAMESPACE)


def _interpolate(real, fake, alpha):
    return torch.ops.gpkernels_triton.interp(real, fake, alpha)


def _penalty_terms(grads, target, one_sided, weight, inv_scale, exponent):
    return torch.ops.gpkernels_triton.penalty_forward(grads, target, one_sided, weight, inv_scale, exponent)


BACKEND = register(Backend(name="triton", device_types=("cpu", "cuda"), refusals=_refusals, auto_rank={"cuda": 1}.get,
                           interpolate=_interpolate, penalty_terms=_penalty_terms))
