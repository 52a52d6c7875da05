"""The build (setup.py, MANIFEST.in) without compiling anything: which architectures the CUDA kernels record,
the fall back to CPU kernels when nvcc and torch disagree on the CUDA major version, pip's CUDA headers
searched after the toolkit's, the clear failure of an isolated build, and a source distribution that ships
every file the build reads. The real round trip (sdist, wheel, install, import) is `make check-dist`."""

import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def build():
    """setup.py as a module (it calls setup() only when run as a script)."""
    spec = importlib.util.spec_from_file_location("gpkernels_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_toolkit(folder, release):
    """A CUDA toolkit folder whose nvcc reports `release` ("12.4")."""
    os.makedirs(os.path.join(folder, "bin"))
    os.makedirs(os.path.join(folder, "include"))
    nvcc = os.path.join(folder, "bin", "nvcc")
    with open(nvcc, "w") as f:
        f.write("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                f"echo 'Cuda compilation tools, release {release}, V{release}.99'\n")
    os.chmod(nvcc, 0o755)
    open(os.path.join(folder, "include", "cuda_runtime.h"), "w").close()
    return str(folder)


def _run_setup(args, block_torch=True, cwd=ROOT):
    """Run setup.py with `args` in a fresh interpreter, with torch made unimportable (as in pip's isolated
    build environment, which does not have it)."""
    code = ("import runpy, sys\n"
            + ("sys.modules['torch'] = None\n" if block_torch else "")
            + f"sys.argv = ['setup.py'] + {list(args)!r}\n"
            + f"runpy.run_path({os.path.join(ROOT, 'setup.py')!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, sass, ptx", [
    (["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=compute_90",
      "-gencode=arch=compute_90,code=sm_90"], ["80", "90"], ["90"]),
    (["-gencode=arch=compute_120,code=sm_120", "-gencode=arch=compute_75,code=sm_75"], ["75", "120"], []),
    (["-gencode arch=compute_90a,code=[sm_90a,compute_90a]", "-O3"], ["90a"], ["90a"]),
])
def test_the_gencode_flags_say_what_the_build_carries(build, flags, sass, ptx):
    assert build.parse_gencode(flags) == (sass, ptx)


def test_the_default_arch_list_is_torch_own_parsing(build, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", build.DEFAULT_ARCHS)
    flags = build.cuda_arch_flags()
    assert flags is not None, "torch no longer exposes _get_cuda_arch_flags: the build records no archs"
    assert build.parse_gencode(flags) == (["80", "90"], ["90"])


@pytest.mark.parametrize("nvcc, torch_cuda, ok", [
    ((13, 0), "13.0", True), ((13, 2), "13.0", True), ((12, 8), "12.6", True),
    ((12, 4), "13.0", False), ((13, 0), "12.8", False),
])
def test_nvcc_and_torch_must_share_the_cuda_major_version(build, nvcc, torch_cuda, ok):
    why = build.cuda_version_mismatch(nvcc, torch_cuda)
    assert (why is None) == ok
    if not ok:
        assert f"nvcc is CUDA {nvcc[0]}.{nvcc[1]} but torch was built with CUDA {torch_cuda}" in why


def test_a_cuda_version_mismatch_builds_the_cpu_kernels_and_says_why(build, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CUDA_HOME", _fake_toolkit(tmp_path / "cuda", "12.4"))
    for name in ("CUDA_PATH", "GPKERNELS_NO_CUDA", "GPKERNELS_FORCE_CUDA"):
        monkeypatch.delenv(name, raising=False)
    fake_torch = types.SimpleNamespace(__version__="2.99.0", version=types.SimpleNamespace(cuda="13.0"))
    use, why = build.want_cuda(fake_torch)
    assert not use and "nvcc is CUDA 12.4 but torch was built with CUDA 13.0" in why
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    (ext,) = build.extensions()
    assert ext.name == "gpkernels._C" and not any(s.endswith(".cu") for s in ext.sources)
    assert "CPU kernels only: nvcc is CUDA 12.4 but torch was built with CUDA 13.0" in capsys.readouterr().err
    monkeypatch.setenv("GPKERNELS_FORCE_CUDA", "1")
    with pytest.raises(SystemExit, match="GPKERNELS_FORCE_CUDA=1 but the CUDA kernels cannot be built: nvcc is "
                                         "CUDA 12.4"):
        build.extensions()
    # same major version: CUDA kernels
    monkeypatch.setenv("CUDA_HOME", _fake_toolkit(tmp_path / "cuda13", "13.1"))
    assert build.want_cuda(fake_torch)[0]


def test_pip_headers_come_after_the_toolkit_and_only_where_it_lacks_them(build, tmp_path):
    toolkit = tmp_path / "cuda" / "include"
    first = tmp_path / "site" / "nvidia" / "cu13" / "include"
    second = tmp_path / "site" / "nvidia" / "cudnn" / "include"
    for folder, names in ((toolkit, ["cuda_runtime.h", "cuComplex.h"]),
                          (first, ["cuda_runtime.h", "cuComplex.h", "cusparse.h", "cublas_v2.h"]),
                          (second, ["cusparse.h", "cudnn.h"])):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text(f"// {folder}\n")
    (first / "cooperative_groups").mkdir()
    lacking = build.headers_lacking(str(toolkit), [str(first), str(second)])
    assert lacking == {"cooperative_groups": str(first / "cooperative_groups"),
                       "cublas_v2.h": str(first / "cublas_v2.h"), "cusparse.h": str(first / "cusparse.h"),
                       "cudnn.h": str(second / "cudnn.h")}
    dest = build.link_headers(lacking, str(tmp_path / "build" / "pip-cuda-headers"))
    assert sorted(os.listdir(dest)) == sorted(lacking)
    assert os.path.realpath(os.path.join(dest, "cusparse.h")) == os.path.realpath(first / "cusparse.h")


def test_the_cuda_build_finds_pip_headers_after_the_toolkit(build, monkeypatch, tmp_path):
    """The flags: -isystem (searched after every -I folder, the toolkit's among them), never an -I of a pip
    folder."""
    toolkit = tmp_path / "cuda"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    pip = tmp_path / "nvidia" / "cu13" / "include"
    pip.mkdir(parents=True)
    (pip / "cusparse.h").write_text("")
    (pip / "cuda_runtime.h").write_text("")
    monkeypatch.setattr(build, "pip_cuda_include_dirs", lambda: [str(pip)])
    monkeypatch.setattr(build, "ROOT", str(tmp_path))
    flags = build.extra_cuda_header_flags(str(toolkit))
    assert flags == ["-isystem", str(tmp_path / "build" / "pip-cuda-headers")]
    assert os.listdir(flags[1]) == ["cusparse.h"]
    (pip / "cusparse.h").unlink()
    assert build.extra_cuda_header_flags(str(toolkit)) == []


def test_a_build_without_torch_fails_with_the_supported_way():
    """pip's isolated build environment (a plain `pip install .`) has no torch: the build stops at once and
    says how to build instead."""
    out = _run_setup(["build_ext", "--inplace"])
    assert out.returncode != 0
    assert "torch cannot be imported here" in out.stderr
    assert "pip install --no-build-isolation ." in out.stderr and "python setup.py build_ext --inplace" in out.stderr


def test_torch_is_not_a_build_requirement():
    """Declaring it would make pip build against a torch it fetches into the isolated environment."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert not any(r.split("=")[0].split(">")[0].split("<")[0].strip() == "torch"
                   for r in project["build-system"]["requires"])
    assert any(r.startswith("torch>=") for r in project["project"]["dependencies"])


@pytest.mark.parametrize("argv, builds", [
    (["setup.py", "build_ext", "--inplace"], True),
    (["setup.py", "bdist_wheel", "--dist-dir", "/tmp/x"], True),
    (["setup.py", "editable_wheel", "--dist-dir", "/tmp/x"], True),
    (["setup.py", "develop"], True),
    (["setup.py", "sdist", "--formats", "gztar", "--dist-dir", "/tmp/x"], False),
    (["setup.py", "egg_info", "--egg-base", "/tmp/x"], False),
    (["setup.py", "dist_info", "--output-dir", "/tmp/x"], False),
])
def test_only_build_commands_need_torch(build, argv, builds):
    assert build.builds_extension(argv) == builds


def test_the_source_distribution_ships_every_file_the_build_reads(tmp_path):
    """Its file list (egg_info's SOURCES.txt, from MANIFEST.in), made without torch as `python -m build
    --sdist` would: every file under csrc/ (sources and the headers they include) and the build's own files."""
    out = _run_setup(["-q", "egg_info", "--egg-base", str(tmp_path)])
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "gpkernels.egg-info" / "SOURCES.txt") as f:
        shipped = set(f.read().split())
    needed = {"setup.py", "pyproject.toml", "README.md", "MANIFEST.in"}
    for folder, _, files in os.walk(os.path.join(ROOT, "csrc")):
        needed |= {os.path.relpath(os.path.join(folder, name), ROOT) for name in files}
    assert {"csrc/gpkernels.h", "csrc/common/penalty_math.h", "csrc/cuda/kernels.cu"} <= needed
    assert needed - shipped == set()
    assert not any(name.endswith(".so") for name in shipped)
