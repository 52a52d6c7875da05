"""Backend choice. Each backend says which devices it can serve and why it refuses the others; `auto` takes
the first that accepts in a per-device order and warns once when it had to skip the preferred one; an
explicit request that cannot be met raises with its reasons.

Precedence: the `backend=` argument of a call, then the innermost `use_backend(...)` block of the current
thread, then the environment variable GPKERNELS_BACKEND (read at import), then "auto".
"""

import contextlib
import importlib.util
import os
import sys
import threading
import warnings

import torch

from . import _ext

NAMES = ("reference", "cpu", "cuda", "triton")
AUTO = "auto"
# Preferred backends per device type for `auto`; other device types get the reference.
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}

_local = threading.local()
_warned = set()


def _check_name(name, where):
    if name != AUTO and name not in NAMES:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {AUTO}, {', '.join(NAMES)}")
    return name


_ENV_DEFAULT = os.environ.get("GPKERNELS_BACKEND", "").strip() or AUTO
_check_name(_ENV_DEFAULT, "GPKERNELS_BACKEND")


def triton_interpreted():
    """Whether gpkernels' Triton kernels run on the CPU: they were loaded under TRITON_INTERPRET=1, or, not
    loaded yet, will be (triton reads the variable when the kernels are defined)."""
    loaded = sys.modules.get("gpkernels._triton_kernels")
    if loaded is not None:
        return loaded._INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_installed():
    return importlib.util.find_spec("triton") is not None


def refusals(name, device):
    """Reasons why backend `name` cannot run tensors on `device` (empty when it can)."""
    device = torch.device(device)
    reasons = []
    if name == "reference":
        return reasons
    if name in ("cpu", "cuda") and not _ext.LOADED:
        reasons.append(f"the compiled extension is not loaded ({_ext.LOAD_ERROR})")
    if name == "cpu":
        if device.type != "cpu":
            reasons.append(f"it runs CPU tensors only, got {device.type} tensors")
    elif name == "cuda":
        if _ext.LOADED and not _ext.WITH_CUDA:
            reasons.append("the extension was built without CUDA kernels")
        if device.type != "cuda":
            reasons.append(f"it runs CUDA tensors only, got {device.type} tensors")
    elif name == "triton":
        if not _triton_installed():
            reasons.append("triton is not installed")
        if device.type == "cpu":
            if not triton_interpreted():
                reasons.append("CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                               "gpkernels")
        elif device.type != "cuda":
            reasons.append(f"it runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device.type}")
    return reasons


def available_backends(device=None):
    """Names of the backends that can run tensors on `device` (a torch.device or string). With no device:
    the backends that can run on at least one device this machine has."""
    if device is not None:
        return [n for n in NAMES if not refusals(n, device)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [n for n in NAMES if any(not refusals(n, d) for d in devices)]


def backend_report():
    """{backend: (available on some device here, reason)} for `python -m gpkernels info`."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {}
    for name in NAMES:
        ok = [d for d in devices if not refusals(name, d)]
        if ok:
            report[name] = (True, "serves " + ", ".join(ok) + " tensors")
        else:
            seen = []
            for d in devices:
                for r in refusals(name, d):
                    if r not in seen:
                        seen.append(r)
            report[name] = (False, "; ".join(seen))
    return report


def current_backend():
    """The backend a call with backend=None would ask for (a name, or 'auto')."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else _ENV_DEFAULT


@contextlib.contextmanager
def use_backend(name):
    """Within the block, calls of this thread with backend=None use `name` ('auto' restores the automatic
    choice). An explicit `backend=` argument still wins."""
    _check_name(name, "gpkernels.use_backend")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def select(where, backend, device):
    """The backend name that runs `where` (e.g. 'gpkernels.penalty') on tensors of `device`."""
    name = _check_name(current_backend() if backend is None else backend, where)
    if name != AUTO:
        reasons = refusals(name, device)
        if reasons:
            raise RuntimeError(f"{where}: backend {name!r} cannot run {device.type} tensors: " + "; ".join(reasons))
        return name
    skipped = []
    for candidate in _AUTO_ORDER.get(device.type, ("reference",)):
        reasons = refusals(candidate, device)
        if not reasons:
            if skipped:
                _warn_once(f"gpkernels: {device.type} tensors use the {candidate!r} backend because "
                           + " and ".join(skipped))
            return candidate
        skipped.append(f"{candidate!r} is unavailable ({'; '.join(reasons)})")
    raise AssertionError("unreachable: the reference backend accepts every device")
