"""Backend choice: auto order, the context manager, GPKERNELS_BACKEND, warn-once fallback, and import with
no extension."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import gpkernels
from gpkernels import backends
from gpkernels.backends import native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _spy_on_select(monkeypatch):
    """The names of the backends the public functions select, in call order."""
    seen = []
    real_select = backends.select

    def spy(*args):
        chosen = real_select(*args)
        seen.append(chosen.name)
        return chosen

    monkeypatch.setattr(backends, "select", spy)
    return seen


def test_auto_prefers_the_compiled_cpu_kernels(monkeypatch):
    if not native.LOADED:
        pytest.skip("extension not loaded")
    calls = _spy_on_select(monkeypatch)
    gpkernels.penalty(torch.randn(3, 4))
    assert calls == ["cpu"]


def test_use_backend_context_and_explicit_argument(monkeypatch):
    fused = [n for n in gpkernels.available_backends("cpu") if n != "reference"]
    if not fused:
        pytest.skip("no fused backend serves CPU tensors here")
    expected_auto = backends.choose("cpu")
    seen = _spy_on_select(monkeypatch)
    g = torch.randn(3, 4)
    with gpkernels.use_backend("reference"):
        assert gpkernels.current_backend() == "reference"
        gpkernels.penalty(g)
        with gpkernels.use_backend("auto"):
            gpkernels.penalty(g)
        gpkernels.penalty(g, backend=fused[-1])
    assert gpkernels.current_backend() == "auto"
    assert seen == ["reference", expected_auto, fused[-1]]
    with pytest.raises(ValueError, match="unknown backend"):
        with gpkernels.use_backend("fast"):
            pass


def test_auto_fallback_warns_once_and_says_why(monkeypatch):
    monkeypatch.setattr(native, "LOADED", False)
    monkeypatch.setattr(native, "LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(backends, "_warned", set())
    g = torch.randn(3, 4)
    with pytest.warns(RuntimeWarning, match="use the 'reference' backend because 'cpu' is unavailable .*simulated"):
        loss = gpkernels.penalty(g)
    torch.testing.assert_close(loss, (g.norm(dim=1) - 1).pow(2).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpkernels.penalty(g)  # second time: silent
    with pytest.raises(RuntimeError, match="backend 'cpu' cannot run cpu tensors: the compiled extension is not "
                                           "loaded"):
        gpkernels.penalty(g, backend="cpu")


def test_available_backends_and_report():
    names = gpkernels.available_backends("cpu")
    assert "reference" in names
    assert ("triton" in names) == gpkernels.backends.triton.interpreted()  # conftest: TRITON_INTERPRET=1 w/o GPU
    assert ("cpu" in names) == native.LOADED
    assert "cuda" not in names
    report = gpkernels.backend_report()
    assert set(report) == set(backends.NAMES)
    assert report["reference"][0] is True


def _run(code, **env):
    full_env = {**os.environ, "PYTHONPATH": ROOT, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_environment_variable_sets_the_default():
    out = _run("import gpkernels; print(gpkernels.current_backend())", GPKERNELS_BACKEND="reference")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"
    bad = _run("import gpkernels", GPKERNELS_BACKEND="nope")
    assert bad.returncode != 0 and "GPKERNELS_BACKEND: unknown backend 'nope'" in bad.stderr


def test_import_without_the_extension_warns_and_works():
    code = ("import sys; sys.modules['gpkernels._C'] = None\n"
            "import warnings; warnings.simplefilter('always')\n"
            "import torch, gpkernels\n"
            "g = torch.ones(2, 4)\n"
            "print(gpkernels.penalty(g).item(), gpkernels.available_backends('cpu'))\n")
    out = _run(code, TRITON_INTERPRET="0")
    assert out.returncode == 0, out.stderr
    assert "could not be loaded" in out.stderr
    assert out.stdout.split()[0] == "1.0"  # (||g|| - 1)^2 = (2 - 1)^2
    available = out.stdout.split(None, 1)[1]
    assert "'reference'" in available and "'cpu'" not in available and "'triton'" not in available


def test_info_command_reports_every_backend():
    out = _run("from gpkernels.__main__ import main; main(['info'])")
    assert out.returncode == 0, out.stderr
    for word in ("torch", "triton", "extension", "reference", "cpu", "cuda"):
        assert word in out.stdout
    if native.LOADED:
        assert "extension      loaded" in out.stdout


@pytest.mark.skipif(os.environ.get("GPKERNELS_EXPECT_CUDA_BUILD") != "1",
                    reason="set GPKERNELS_EXPECT_CUDA_BUILD=1 where the build must include the CUDA kernels")
def test_the_build_compiled_the_cuda_kernels():
    assert native.LOADED, native.LOAD_ERROR
    assert native.WITH_CUDA, "nvcc and a CUDA torch are present but the extension has no CUDA kernels"
    assert native.CUDA_ARCHS not in ("", "unknown"), "the build does not say which architectures it carries"


def test_a_backend_is_one_registration(monkeypatch):
    """A new backend is one Backend registered by its module: it becomes a valid name, takes part in auto's
    order for the device types it ranks, and runs the public functions."""
    calls = []

    def penalty_terms(grads, target, one_sided, weight, inv_scale, exponent):
        calls.append("penalty_terms")
        return gpkernels.reference.penalty_terms(grads, target, one_sided, weight, inv_scale, exponent)

    def interpolate(real, fake, alpha):
        calls.append("interpolate")
        return gpkernels.reference.interpolate(real, fake, alpha)

    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setattr(backends, "NAMES", backends.NAMES)
    backends.register(backends.Backend(name="spy", device_types=("cpu",), refusals=lambda device: [],
                                       auto_rank={"cpu": -1}.get, interpolate=interpolate,
                                       penalty_terms=penalty_terms))
    assert "spy" in backends.NAMES and "spy" in gpkernels.available_backends("cpu")
    g = torch.randn(3, 4)
    torch.testing.assert_close(gpkernels.penalty(g, backend="spy"), gpkernels.penalty(g, backend="reference"))
    assert backends.choose("cpu") == "spy"  # ranked first for CPU tensors
    gpkernels.interpolate(g, g, backend="auto")
    assert calls == ["penalty_terms", "interpolate"]
    with pytest.raises(ValueError, match="the name 'spy' is taken"):
        backends.register(backends.get("spy"))


def test_use_backend_is_per_asyncio_task():
    """Two tasks interleaved on one thread each see their own use_backend block."""
    import asyncio

    seen = {}

    async def task(name, other_started, mine_started):
        with gpkernels.use_backend(name):
            mine_started.set()
            await other_started.wait()       # the other task is now inside its own block
            await asyncio.sleep(0)
            seen[name] = gpkernels.current_backend()

    async def main():
        a, b = asyncio.Event(), asyncio.Event()
        await asyncio.gather(task("reference", b, a), task("auto", a, b))

    asyncio.run(main())
    assert seen == {"reference": "reference", "auto": "auto"}
    assert gpkernels.current_backend() == "auto"
