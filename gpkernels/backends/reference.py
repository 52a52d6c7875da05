"""The "reference" backend: gpkernels.reference's plain-PyTorch formulas. It serves every device, and
autograd differentiates it to any order; `auto` takes it where no fused backend can run."""

from .. import reference
from . import Backend, register


BACKEND = register(Backend(
    name="reference",
    device_types=("cpu", "cuda"),
    refusals=lambda device: [],
    auto_rank=lambda device_type: 100,   # last everywhere
    interpolate=reference.interpolate,
    penalty_terms=reference.penalty_terms,
    any_order=True,
))
