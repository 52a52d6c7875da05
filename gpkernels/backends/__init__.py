"""The backend registry: which implementation runs an op on which device.

A backend is one module of this package that builds a `Backend` and calls `register` on import:

    reference.py   plain PyTorch (gpkernels.reference): every device, any derivative order
    native.py      the compiled extension gpkernels._C (csrc/): "cpu" and "cuda"
    triton/        Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1

Each backend says which devices it can serve and why it refuses the others (`refusals`), where it stands
in `auto`'s order per device type (`auto_rank`), and runs the two fused ops of the public functions
(`interpolate`, `penalty_terms`). `auto` takes the first backend that accepts, warning once when it had
to skip the preferred one; an explicit request that cannot be met raises with its reasons.

Precedence of the choice: the `backend=` argument of a call, then the innermost `use_backend(...)` block
of the current context (thread, or asyncio task: a context variable), then the environment variable
GPKERNELS_BACKEND (read at import), then "auto".

Public: NAMES, AUTO, Backend, register, get, refusals, select, choose, available_backends,
backend_report, current_backend, use_backend.
"""

import contextlib
import contextvars
import dataclasses
import functools
import os
import typing
import warnings

import torch

AUTO = "auto"
_REGISTRY: dict = {}
NAMES: tuple = ()   # the registered backend names, in registration order (filled by register)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of the fused ops.

    name: what `backend=` takes.
    device_types: the device types it serves when its requirements are met (the test suite runs it on
        each of them that the machine has).
    refusals: device -> list of reasons it cannot run tensors there (empty: it can).
    auto_rank: device type -> position in `auto`'s order for that device type (lower first), or None
        when `auto` should never pick it there.
    interpolate: (real (B, *), fake (B, *), alpha (B,) in real's dtype) -> (B, *).
    penalty_terms: (grads (B, *), target, one_sided, weight, inv_scale, exponent) -> (values (B,), norms (B,))
        in the accumulation dtype (values_i = weight * |d_i|^exponent), differentiable twice w.r.t. grads
        through values.
    any_order: autograd differentiates it to any order (the reference). A fused backend (False) gives
        exactly two derivatives of penalty_terms and raises NotImplementedError, saying "differentiable
        twice", on a third.

    The contract the backend-parametrised tests check on every backend: results equal the reference's (in
    float64 to rounding; in lower precision within twice its error), outputs and gradients keep the layout
    of a batch-outer dense input (contiguous, channels_last: see _schema.py), accumulation in float32
    (float64 for float64), a zero gradient gives finite values and a zero derivative, and the input checks
    raise the public functions' errors.
    """

    name: str
    device_types: tuple
    refusals: typing.Callable
    auto_rank: typing.Callable
    interpolate: typing.Callable
    penalty_terms: typing.Callable
    any_order: bool = False


def register(backend):
    """Add a backend to the registry (its module calls this on import)."""
    global NAMES
    if backend.name == AUTO or backend.name in _REGISTRY:
        raise ValueError(f"gpkernels.backends.register: the name {backend.name!r} is taken")
    _REGISTRY[backend.name] = backend
    NAMES = tuple(_REGISTRY)
    return backend


def _check_name(name, where):
    if name != AUTO and name not in _REGISTRY:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {AUTO}, {', '.join(NAMES)}")
    return name


def get(name):
    """The registered Backend called `name`."""
    return _REGISTRY[_check_name(name, "gpkernels.backends.get")]


def refusals(name, device):
    """Reasons why backend `name` cannot run tensors on `device` (empty when it can)."""
    return list(get(name).refusals(torch.device(device)))


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def available_backends(device=None):
    """Names of the backends that can run tensors on `device` (a torch.device or string). With no device:
    the backends that can run on at least one device this machine has."""
    devices = _devices() if device is None else [device]
    return [n for n in NAMES if any(not refusals(n, d) for d in devices)]


def backend_report():
    """{backend: (available on some device here, reason)} for `python -m gpkernels info`."""
    report = {}
    for name in NAMES:
        ok = [d for d in _devices() if not refusals(name, d)]
        if ok:
            report[name] = (True, "serves " + ", ".join(ok) + " tensors")
            continue
        seen = []
        for d in _devices():
            seen += [r for r in refusals(name, d) if r not in seen]
        report[name] = (False, "; ".join(seen))
    return report


# The innermost use_backend block's name, per context: a thread, or an asyncio task (each task runs in a copy
# of the context it was created in, so interleaved tasks on one thread do not see each other's blocks).
_current = contextvars.ContextVar("gpkernels_backend", default=None)
_warned = set()


def current_backend():
    """The backend a call with backend=None would ask for (a name, or 'auto')."""
    name = _current.get()
    return _ENV_DEFAULT if name is None else name


@contextlib.contextmanager
def use_backend(name):
    """Within the block, calls of this context (thread or asyncio task) with backend=None use `name` ('auto'
    restores the automatic choice). An explicit `backend=` argument still wins."""
    _check_name(name, "gpkernels.use_backend")
    token = _current.set(name)
    try:
        yield name
    finally:
        _current.reset(token)


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=5)


@functools.lru_cache(maxsize=None)
def _auto_order(device_type, names):
    """The backends `auto` tries for a device type, best first (cached per registry state: `names`)."""
    ranked = sorted((rank, i, b) for i, b in enumerate(_REGISTRY[n] for n in names)
                    if (rank := b.auto_rank(device_type)) is not None)
    return tuple(b for _, _, b in ranked)


def select(where, backend, device):
    """The Backend that runs `where` (e.g. 'gpkernels.penalty') on tensors of `device`, for a call's
    `backend=` argument (None: the current default)."""
    name = _check_name(current_backend() if backend is None else backend, where)
    if name != AUTO:
        chosen = _REGISTRY[name]
        reasons = chosen.refusals(device)
        if reasons:
            raise RuntimeError(f"{where}: backend {name!r} cannot run {device.type} tensors: " + "; ".join(reasons))
        return chosen
    skipped = []
    for candidate in _auto_order(device.type, NAMES):
        reasons = candidate.refusals(device)
        if not reasons:
            if skipped:
                _warn_once(f"gpkernels: {device.type} tensors use the {candidate.name!r} backend because "
                           + " and ".join(skipped))
            return candidate
        skipped.append(f"{candidate.name!r} is unavailable ({'; '.join(reasons)})")
    raise RuntimeError(f"{where}: no backend can run {device.type} tensors: " + "; ".join(skipped))


def choose(device, backend=None):
    """The name of the backend a call on tensors of `device` with `backend=` would run (None: the current
    default), e.g. for a log line."""
    return select("gpkernels.backends.choose", backend, torch.device(device)).name


# The backends, in the order NAMES lists them.
from . import reference, native, triton  # noqa: E402,F401  (each registers itself)

_ENV_DEFAULT = _check_name(os.environ.get("GPKERNELS_BACKEND", "").strip() or AUTO, "GPKERNELS_BACKEND")
