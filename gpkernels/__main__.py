"""`python -m gpkernels info`: versions, how the extension was built, and every backend's availability.
`python -m gpkernels demo`: info, then a short correctness, training and speed tour (gpkernels/demo.py)."""

import argparse
import importlib.metadata
import platform
import sys


def info():
    import torch

    import gpkernels
    from gpkernels import _ext

    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = "not installed"
    lines = [
        f"gpkernels      {gpkernels.__version__}",
        f"python         {platform.python_version()} ({sys.executable})",
        f"torch          {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"triton         {triton_version}",
        f"CUDA devices   {torch.cuda.device_count()}"
        + ("".join(f"\n               {i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))),
        f"CPU threads    {torch.get_num_threads()}",
    ]
    if _ext.LOADED:
        cuda = f"yes, archs {_ext.CUDA_ARCHS}" if _ext.WITH_CUDA else "no"
        lines.append(f"extension      loaded; CUDA kernels: {cuda}")
    else:
        lines.append(f"extension      not loaded: {_ext.LOAD_ERROR}")
    lines.append(f"default        {gpkernels.current_backend()}")
    lines.append("backends")
    for name, (ok, reason) in gpkernels.backend_report().items():
        lines.append(f"  {name:<10} {'available' if ok else 'unavailable'}: {reason}")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpkernels", description=__doc__)
    parser.add_argument("command", choices=["info", "demo"],
                        help="info: versions and backends; demo: a short correctness, training and speed tour")
    parser.add_argument("--steps", type=int, default=1000, help="demo: critic training steps (default 1000)")
    args = parser.parse_args(argv)
    if args.steps < 5:
        parser.error("--steps must be at least 5")
    info()
    if args.command == "demo":
        from gpkernels.demo import main as demo

        print()
        return demo(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
