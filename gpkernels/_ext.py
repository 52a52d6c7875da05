"""Loading of the compiled extension gpkernels._C (C++ CPU kernels, CUDA kernels when built with them).

The extension registers the ops torch.ops.gpkernels.* when it is imported. If it is missing or does not
load (not built, built against another torch), gpkernels still works on the reference and Triton backends
and says why, once, at import.
"""

import warnings

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
