"""Registered ops: torch.ops.gpkernels.* (compiled C++/CUDA kernels, when the extension loads) and
torch.ops.gpkernels_triton.* (Triton kernels), with the same schemas, fake implementations and derivatives."""

from .. import _ext
from . import interpolate, penalty

NATIVE = "gpkernels"
TRITON = "gpkernels_triton"

# The compiled ops carry their autograd in C++ (csrc/autograd.cpp); the Triton ops get it here.
if _ext.LOADED:
    interpolate.register(NATIVE, autograd=False)
    penalty.register(NATIVE, autograd=False)
interpolate.register(TRITON, autograd=True)
penalty.register(TRITON, autograd=True)
