"""Shared fixtures. Without a GPU, Triton's interpreter is switched on before triton is first imported, so
that the Triton kernels run on CPU tensors in the normal suite; with a GPU they run compiled."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import gpkernels  # noqa: E402

HAS_GPU = torch.cuda.is_available()



def _backend_devices():
    """(backend, device) pairs the suite runs, from the backend registry: every registered backend on each
    device type it serves. The CUDA ones carry the `gpu` marker (skipped on a machine without a GPU)."""
    params = []
    for name in gpkernels.backends.NAMES:
        types = gpkernels.backends.get(name).device_types
        for device in types:
            marks = [pytest.mark.gpu] if device == "cuda" else []
            params.append(pytest.param(name, device, id=name if len(types) == 1 else f"{name}-{device}",
                                       marks=marks))
    return params


BACKEND_DEVICES = _backend_devices()
# The fused ones: exactly two derivatives (a third raises), and checked against the reference.
FUSED_BACKEND_DEVICES = [p for p in BACKEND_DEVICES if not gpkernels.backends.get(p.values[0]).any_order]

# Absolute and relative tolerance of a fused result against the float64 truth, per dtype, on top of the
# rule "no more than twice PyTorch's own error in that dtype".
TOLERANCES = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def assert_close_to_truth(fused, ours_in_dtype_ref, truth, dtype):
    """fused and the reference in the same dtype, both against the float64 truth: the fused error may be at
    most twice the reference's own error plus the dtype's tolerance."""
    atol, rtol = TOLERANCES[dtype]
    fused64, ref64, truth64 = (t.detach().double().cpu() for t in (fused, ours_in_dtype_ref, truth))
    assert fused64.shape == truth64.shape
    assert torch.isfinite(fused64).all() == torch.isfinite(truth64).all()
    bound = 2 * (ref64 - truth64).abs() + atol + rtol * truth64.abs()
    excess = (fused64 - truth64).abs() - bound
    worst = excess.max().item() if excess.numel() else 0.0
    assert worst <= 0, f"fused result off by {worst:.3g} beyond the bound (dtype {dtype})"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip where torch sees no CUDA device."""
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def require(backend, device):
    """Skip when `backend` cannot run on `device` on this machine (e.g. the extension is not built)."""
    reasons = gpkernels.backends.refusals(backend, device)
    if reasons:
        pytest.skip(f"{backend} on {device}: {'; '.join(reasons)}")
