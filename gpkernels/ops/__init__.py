"""Registered ops: torch.ops.gpkernels.* (compiled C++/CUDA kernels, when the extension loads) and
torch.ops.gpkernels_triton.* (Triton kernels), with the same schemas, fake implementations and autograd."""

from .. import _ext
from . import interpolate, penalty

NATIVE = "gpkernels"
TRITON = "gpkernels_triton"

for _namespace in ([NATIVE] if _ext.LOADED else []) + [TRITON]:
    interpolate.register(_namespace)
    penalty.register(_namespace)
