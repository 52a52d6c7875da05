"""Build of gpkernels: one extension, gpkernels._C, with the C++ CPU kernels always and the CUDA kernels
whenever nvcc and a CUDA build of torch of the same CUDA major version are present (a GPU is not needed to
compile them).

It compiles against the torch that is installed where it runs, which must be the torch that will import it:

    python setup.py build_ext --inplace             # in the source tree
    pip install --no-build-isolation .              # or -e .; install torch first

A plain `pip install .` (build isolation) fails with this instruction: the isolated build environment has no
torch, and building against a torch that pip would fetch for it gives an extension the installed torch may
not load. Making a source distribution (`python setup.py sdist`, `egg_info`) needs no torch.

Environment switches:
  GPKERNELS_NO_CUDA=1     build the CPU kernels only
  GPKERNELS_FORCE_CUDA=1  fail unless the CUDA kernels can be built (otherwise the build says why it skips them)
  TORCH_CUDA_ARCH_LIST    architectures to compile for (torch's syntax: "8.0;9.0+PTX", "Ampere", ...); when
                          unset and no GPU is visible, "8.0;9.0+PTX"; the extension records the SASS and PTX
                          it carries, and the cuda backend refuses a GPU they do not cover
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
SUPPORTED_WAY = ("build gpkernels against the torch that will import it: install torch first, then run "
                 "`pip install --no-build-isolation .` (or `-e .`), or `python setup.py build_ext --inplace` in "
                 "the source tree")
# Commands that write metadata or a source distribution only: they need neither torch nor a compiler. Any
# other command (build_ext, bdist_wheel, editable_wheel, install, develop, ...) builds the extension.
METADATA_COMMANDS = frozenset({"sdist", "egg_info", "dist_info", "check", "clean"})
BUILD_COMMANDS = frozenset({"build", "build_ext", "bdist", "bdist_wheel", "bdist_egg", "editable_wheel", "install",
                            "develop"})


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg):
    print(f"gpkernels build: {msg}", file=sys.stderr)


def builds_extension(argv):
    """Whether a setup.py command line compiles the extension (sdist and metadata commands do not)."""
    words = set(argv[1:])
    return bool(words & BUILD_COMMANDS) or not words & METADATA_COMMANDS


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


def nvcc_version(cuda_home):
    """The release of the toolkit's nvcc as (major, minor), or None when it cannot be read."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_version_mismatch(nvcc, torch_cuda):
    """Why an nvcc of release `nvcc` (major, minor) cannot build kernels for a torch built with CUDA
    `torch_cuda` ("12.8"), or None. Only the major version must agree: torch itself refuses a different major
    (the CUDA runtime's ABI changes) and accepts another minor."""
    torch_major = int(torch_cuda.split(".")[0])
    if nvcc[0] == torch_major:
        return None
    return (f"nvcc is CUDA {nvcc[0]}.{nvcc[1]} but torch was built with CUDA {torch_cuda}; the major versions "
            f"must agree (point CUDA_HOME at a CUDA {torch_major}.x toolkit, or install a torch built for CUDA "
            f"{nvcc[0]})")


def want_cuda(torch):
    """(build CUDA?, reason)."""
    if _flag("GPKERNELS_NO_CUDA"):
        return False, "GPKERNELS_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    home = find_cuda_home()
    if home is None:
        return False, "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    nvcc = nvcc_version(home)
    if nvcc is None:
        return False, f"cannot read the release of {os.path.join(home, 'bin', 'nvcc')} (nvcc --version)"
    mismatch = cuda_version_mismatch(nvcc, torch.version.cuda)
    if mismatch:
        return False, mismatch
    return True, f"torch CUDA {torch.version.cuda}, nvcc {nvcc[0]}.{nvcc[1]} in {home}"


def parse_gencode(flags):
    """What nvcc's -gencode flags put in the binary: (SASS, PTX), each a sorted list of compute capability
    codes as nvcc writes them ("80", "90a", "120"). code=sm_XY is machine code (SASS) for XY,
    code=compute_XY is PTX, compiled by the driver for the GPU it runs on."""
    sass, ptx = set(), set()
    for flag in flags:
        m = re.fullmatch(r"-gencode[= ]arch=compute_(\w+),code=\[?([\w,]+)\]?", flag.strip())
        if not m:
            continue
        for code in m.group(2).split(","):
            kind, _, num = code.partition("_")
            (sass if kind == "sm" else ptx if kind == "compute" else set()).add(num)

    def key(num):
        digits = re.match(r"\d+", num).group(0)
        return int(digits), num

    return sorted(sass, key=key), sorted(ptx, key=key)


def cuda_arch_flags():
    """The -gencode flags for TORCH_CUDA_ARCH_LIST (or the visible GPUs), as torch would add them, or None
    when this torch does not say. Passing them explicitly makes what the extension records of its archs
    (parse_gencode) exactly what nvcc compiled."""
    from torch.utils import cpp_extension

    get = getattr(cpp_extension, "_get_cuda_arch_flags", None)  # torch's own parser of the list (private)
    if get is None:
        return None
    return list(get())


def headers_lacking(toolkit_include, include_dirs):
    """{name: path} of the entries (headers, header folders) of `include_dirs` that the toolkit's include
    folder lacks; the first folder that has one wins."""
    lacking = {}
    for inc in include_dirs:
        for name in sorted(os.listdir(inc)):
            if name not in lacking and not os.path.exists(os.path.join(toolkit_include, name)):
                lacking[name] = os.path.join(inc, name)
    return lacking


def link_headers(lacking, dest):
    """A folder `dest` holding a symbolic link per entry of `lacking` (and nothing else)."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    for name, path in lacking.items():
        os.symlink(path, os.path.join(dest, name))
    return dest


def pip_cuda_include_dirs():
    """Include folders of pip's nvidia-* packages (e.g. nvidia/cu13/include with cusparse.h and cublas_v2.h,
    which torch's CUDA headers include and a bare toolkit may lack)."""
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    found = []
    for root in roots:
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            inc = os.path.realpath(inc)
            if inc not in found:
                found.append(inc)
    return found


def extra_cuda_header_flags(cuda_home):
    """Compiler flags that let the build find the headers of pip's nvidia-* packages that the toolkit lacks,
    searched after the toolkit's: a folder of links to those headers only, as -isystem (searched after every
    -I folder, the toolkit's included), so that no toolkit header is ever replaced by a pip one."""
    lacking = headers_lacking(os.path.join(cuda_home, "include"), pip_cuda_include_dirs())
    if not lacking:
        return []
    dest = link_headers(lacking, os.path.join(ROOT, "build", "pip-cuda-headers"))
    _say(f"{len(lacking)} headers the toolkit lacks come from pip's nvidia packages (through {dest})")
    return ["-isystem", dest]


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise SystemExit(
            f"gpkernels build: torch cannot be imported here ({exc}). A plain `pip install .` builds in an "
            f"isolated environment without your torch, which is not supported: {SUPPORTED_WAY}.") from None
    return torch


def extensions():
    torch = _import_torch()
    use_cuda, why = want_cuda(torch)
    if _flag("GPKERNELS_FORCE_CUDA") and not use_cuda:
        raise SystemExit(f"gpkernels build: GPKERNELS_FORCE_CUDA=1 but the CUDA kernels cannot be built: {why}")
    _say(f"torch {torch.__version__} from {os.path.dirname(torch.__file__)}")
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
    gencode = cuda_arch_flags()
    if gencode is None:
        _say("this torch does not expose its -gencode flags: the extension cannot record its SASS and PTX, and "
             "the cuda backend will not check that a GPU is covered")
    else:
        sass, ptx = parse_gencode(gencode)
        _say(f"CUDA kernels carry SASS {' '.join('sm_' + a for a in sass) or '(none)'}, "
             f"PTX {' '.join('compute_' + a for a in ptx) or '(none)'}")
        nvcc += gencode
        # Read by ops.cpp's module attributes (cuda_sass, cuda_ptx). Host compiler only: nvcc splits -D at commas.
        cxx += [f"-DGPKERNELS_CUDA_SASS={','.join(sass)}", f"-DGPKERNELS_CUDA_PTX={','.join(ptx)}"]
    headers = extra_cuda_header_flags(find_cuda_home())
    return [
        CUDAExtension(
            "gpkernels._C",
            sources + ["csrc/cuda/kernels.cu"],
            extra_compile_args={"cxx": cxx + headers, "nvcc": nvcc + headers},
        )
    ]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


if __name__ == "__main__":  # setuptools' PEP 517 backend runs this file as __main__ too; tests import it
    if builds_extension(sys.argv):
        setup(ext_modules=extensions(), cmdclass=cmdclass())
    else:
        setup()
