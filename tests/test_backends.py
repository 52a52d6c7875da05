"""Backend choice: auto order, the context manager, GPKERNELS_BACKEND, warn-once fallback, and import with
no extension."""

import os
import subprocess
import sys
import types
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
        assert f"built against torch {torch.__version__.split('+')[0]}" in out.stdout
    if native.LOADED and native.WITH_CUDA and native.CUDA_SASS is not None:
        assert "CUDA archs     " + native.describe_archs(native.CUDA_SASS, native.CUDA_PTX) in out.stdout


@pytest.mark.skipif(os.environ.get("GPKERNELS_EXPECT_CUDA_BUILD") != "1",
                    reason="set GPKERNELS_EXPECT_CUDA_BUILD=1 where the build must include the CUDA kernels")
def test_the_build_compiled_the_cuda_kernels():
    assert native.LOADED, native.LOAD_ERROR
    assert native.WITH_CUDA, "nvcc and a CUDA torch are present but the extension has no CUDA kernels"
    assert native.CUDA_ARCHS not in ("", "unknown"), "the build does not say which architectures it carries"
    assert native.CUDA_SASS is not None, "the build does not record its SASS and PTX"
    assert native.CUDA_SASS or native.CUDA_PTX
    # What setup.py recorded from its -gencode flags is what nvcc compiled (__CUDA_ARCH_LIST__: 800 for 8.0).
    recorded = {native._arch(a)[:2] for a in native.CUDA_SASS + native.CUDA_PTX}
    compiled = {divmod(int(a) // 10, 10) for a in native.CUDA_ARCHS.split(",")}
    assert recorded == compiled, (native.CUDA_SASS, native.CUDA_PTX, native.CUDA_ARCHS)


# The rule that decides whether the CUDA kernels can run on a GPU, as a pure function of its compute capability
# and what the build carries (SASS: runs on the same major with an equal or higher minor; PTX: compiled by the
# driver for that capability and every higher one).
@pytest.mark.parametrize("capability, sass, ptx, runs", [
    ((7, 5), ("80", "90"), ("90",), False),        # T4 against the default 8.0;9.0+PTX
    ((7, 0), ("80", "90"), ("90",), False),        # V100
    ((8, 0), ("80", "90"), ("90",), True),
    ((8, 6), ("80",), (), True),                   # sm_80 SASS runs on 8.6
    ((8, 9), ("80", "90"), ("90",), True),
    ((9, 0), ("80",), (), False),                  # no SASS of major 9, no PTX
    ((9, 0), ("80",), ("80",), True),              # PTX 8.0 compiled for 9.0
    ((10, 0), ("90",), ("90",), True),             # through the PTX
    ((12, 0), ("80", "90"), (), False),            # no PTX: nothing for a newer major
    ((12, 0), ("80", "90", "120"), (), True),
    ((9, 0), ("90a",), (), True),                  # arch-specific SASS: that capability only
    ((10, 0), ("90a",), ("90a",), False),
    ((10, 3), ("100f",), (), True),                # family SASS: same major
    ((12, 0), (), ("100f",), False),               # family PTX: same major only
])
def test_cuda_arch_coverage_rule(capability, sass, ptx, runs):
    reason = native.cuda_arch_refusal(capability, sass, ptx)
    assert (reason is None) == runs, reason
    if not runs:
        major, minor = capability
        assert f"no kernel image for this GPU (compute capability {major}.{minor}" in reason
        assert native.describe_archs(sass, ptx) in reason
        assert f'TORCH_CUDA_ARCH_LIST="{major}.{minor}"' in reason


def _pretend_gpu(monkeypatch, capability, sass=("80", "90"), ptx=("90",)):
    """A machine whose CUDA device 0 has `capability`, and an extension built with CUDA kernels for
    sass/ptx (no GPU needed)."""
    monkeypatch.setattr(native, "LOADED", True)
    monkeypatch.setattr(native, "WITH_CUDA", True)
    monkeypatch.setattr(native, "CUDA_SASS", sass)
    monkeypatch.setattr(native, "CUDA_PTX", ptx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []

    def properties_of(device=None):
        asked.append(device)
        return types.SimpleNamespace(major=capability[0], minor=capability[1], name="pretend GPU")

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties_of)
    return asked


def test_cuda_backend_refuses_a_gpu_the_build_does_not_cover(monkeypatch):
    asked = _pretend_gpu(monkeypatch, (7, 5))
    reasons = backends.refusals("cuda", "cuda:0")
    assert len(reasons) == 1 and "no kernel image for this GPU (compute capability 7.5" in reasons[0], reasons
    assert asked == [torch.device("cuda", 0)]
    asked.clear()
    assert "got cpu tensors" in backends.refusals("cuda", "cpu")[0]
    assert asked == []  # the capability is asked of CUDA devices only
    # auto moves on to the next backend for CUDA tensors, warning once with the reason
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match="'cuda' is unavailable .*no kernel image for this GPU"):
        chosen = backends.select("gpkernels.penalty", "auto", torch.device("cuda", 0))
    assert chosen.name != "cuda"
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run cuda tensors: the build carries no kernel"):
        backends.select("gpkernels.penalty", "cuda", torch.device("cuda", 0))


def test_cuda_backend_accepts_a_covered_gpu(monkeypatch):
    _pretend_gpu(monkeypatch, (8, 6))
    assert backends.refusals("cuda", "cuda:0") == []
    assert backends.select("gpkernels.penalty", "auto", torch.device("cuda", 0)).name == "cuda"
    _pretend_gpu(monkeypatch, (10, 0))  # through compute_90 PTX
    assert backends.refusals("cuda", "cuda") == []
    # A build that did not record its archs is not second-guessed.
    _pretend_gpu(monkeypatch, (7, 5), sass=None, ptx=None)
    assert backends.refusals("cuda", "cuda") == []


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
