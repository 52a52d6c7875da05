"""Build of gpkernels: one extension, gpkernels._C, with the C++ CPU kernels always and the CUDA kernels
whenever nvcc and a CUDA build of torch are present (a GPU is not needed to compile them).

Environment switches:
  GPKERNELS_NO_CUDA=1     build the CPU kernels only
  GPKERNELS_FORCE_CUDA=1  fail unless the CUDA kernels can be built
  TORCH_CUDA_ARCH_LIST    architectures to compile for; when unset and no GPU is visible, "8.0;9.0+PTX"
  MAX_JOBS                parallel compile jobs (ninja)
  CUDA_HOME / CUDA_PATH   the CUDA toolkit; otherwise found from nvcc
"""

import glob
import os
import re
import shutil
import site
import subprocess
import sys

from setuptools import setup

DEFAULT_ARCHS = "8.0;9.0+PTX"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg):
    print(f"gpkernels build: {msg}", file=sys.stderr)


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home():
    """The CUDA toolkit root, or None. nvcc on PATH may be a wrapper script outside the toolkit, so the
    candidates are: CUDA_HOME/CUDA_PATH, nvcc's real path, the TOP that nvcc itself reports, /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            out = subprocess.run([nvcc, "-dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
            m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
            if m:
                candidates.append(os.path.normpath(m.group(1).strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if _is_toolkit(c):
            return os.path.realpath(c)
    return None


def pip_cuda_include_dirs():
    """Include folders of pip's nvidia-* packages (e.g. nvidia/cu13/include with cusparse.h), which torch's
    CUDA headers may need and a bare toolkit may lack."""
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    found = []
    for root in roots:
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            inc = os.path.realpath(inc)
            if inc not in found and os.path.isfile(os.path.join(inc, "cusparse.h")):
                found.append(inc)
    return found


def want_cuda(torch):
    """(build CUDA?, reason)."""
    if _flag("GPKERNELS_NO_CUDA"):
        return False, "GPKERNELS_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    if find_cuda_home() is None:
        return False, "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    return True, f"torch CUDA {torch.version.cuda}, toolkit {find_cuda_home()}"


def extensions():
    import torch

    use_cuda, why = want_cuda(torch)
    if _flag("GPKERNELS_FORCE_CUDA") and not use_cuda:
        raise RuntimeError(f"GPKERNELS_FORCE_CUDA=1 but the CUDA kernels cannot be built: {why}")
    _say(("building CUDA kernels: " if use_cuda else "CPU kernels only: ") + why)
    if use_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = find_cuda_home()
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
        _say(f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(the visible GPUs)')}")
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/cpu/kernels.cpp"]
    cxx = ["-O3"]
    if torch._C.has_openmp and sys.platform.startswith("linux"):
        # at::parallel_for is a header template whose OpenMP backend is a `#pragma omp parallel`: without
        # -fopenmp it compiles to a serial loop and the CPU kernels ignore torch.set_num_threads. The GOMP
        # symbols resolve at load time to the OpenMP runtime torch itself loaded, so nothing more is linked.
        cxx.append("-fopenmp")
    if not use_cuda:
        return [CppExtension("gpkernels._C", sources, extra_compile_args={"cxx": cxx})]
    cxx.append("-DGPKERNELS_WITH_CUDA")
    nvcc = ["-O3", "-DGPKERNELS_WITH_CUDA", "--expt-relaxed-constexpr"]
    return [
        CUDAExtension(
            "gpkernels._C",
            sources + ["csrc/cuda/kernels.cu"],
            include_dirs=pip_cuda_include_dirs(),
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        )
    ]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


setup(ext_modules=extensions(), cmdclass=cmdclass())
