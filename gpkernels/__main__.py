"""`python -m gpkernels COMMAND [options]`: every command of the package, one way to start them.

    info          versions, how the extension was built, and every backend's availability
    demo          info, then a short correctness, training and speed tour (gpkernels/demo.py)
    train         the reference WGAN trainer (gpkernels/trainer/cli.py; `train --help` lists its options;
                  under torchrun: `torchrun --nproc_per_node=2 -m gpkernels train ...`)
    experiments   the WGAN-GP paper's findings as figures and a report (gpkernels/trainer/experiments.py)
    bench         a benchmark of the source checkout: `bench {head,penalty,step,conv_weight_grad} [options]`
                  runs benchmarks/bench_NAME.py
"""

import importlib.metadata
import pathlib
import platform
import runpy
import sys

COMMANDS = ("info", "demo", "train", "experiments", "bench")
PROG = "python -m gpkernels"


def info():
    import torch

    import gpkernels
    from gpkernels.backends import native

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
        + "".join(f"\n               {i}: {torch.cuda.get_device_name(i)} (compute capability "
                  f"{'.'.join(map(str, torch.cuda.get_device_capability(i)))})"
                  for i in range(torch.cuda.device_count())),
        f"CPU threads    {torch.get_num_threads()}",
    ]
    if native.LOADED:
        built = f" against torch {native.BUILT_TORCH}" if native.BUILT_TORCH else ""
        lines.append(f"extension      loaded (built{built}); CUDA kernels: {'yes' if native.WITH_CUDA else 'no'}")
        if native.WITH_CUDA:
            carried = ("not recorded by this build" if native.CUDA_SASS is None
                       else native.describe_archs(native.CUDA_SASS, native.CUDA_PTX))
            lines.append(f"CUDA archs     {carried} (nvcc arch list {native.CUDA_ARCHS})")
    else:
        lines.append(f"extension      not loaded: {native.LOAD_ERROR}")
    lines.append(f"default        {gpkernels.current_backend()}")
    lines.append("backends")
    for name, (ok, reason) in gpkernels.backend_report().items():
        lines.append(f"  {name:<10} {'available' if ok else 'unavailable'}: {reason}")
    print("\n".join(lines))


def _demo(argv):
    import argparse

    parser = argparse.ArgumentParser(prog=f"{PROG} demo", description="info, then a short correctness, "
                                     "training and speed tour on the CPU")
    parser.add_argument("--steps", type=int, default=1000, help="critic training steps (default 1000)")
    args = parser.parse_args(argv)
    if args.steps < 5:
        parser.error("--steps must be at least 5")
    info()
    from gpkernels.demo import main as demo

    print()
    return demo(args.steps)


def _bench(argv):
    folder = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    names = sorted(p.stem[len("bench_"):] for p in folder.glob("bench_*.py"))
    if not names:
        print(f"{PROG} bench: the benchmarks ship with the source checkout ({folder} does not exist)",
              file=sys.stderr)
        return 2
    if not argv or argv[0] not in names:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print(f"usage: {PROG} bench {{{','.join(names)}}} [options]  (bench NAME --help: its options)",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    script = folder / f"bench_{argv[0]}.py"
    saved = list(sys.argv), list(sys.path)
    sys.argv = [f"{PROG} bench {argv[0]}", *argv[1:]]
    sys.path.insert(0, str(folder))
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        stream = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            print(f"{PROG}: unknown command {argv[0]!r}", file=stream)
        print(f"usage: {PROG} {{{','.join(COMMANDS)}}} [options]\n\n" + __doc__.split("\n\n", 1)[1], file=stream)
        return 0 if stream is sys.stdout else 2
    command, rest = argv[0], argv[1:]
    if command == "info":
        info()
        return 0
    if command == "demo":
        return _demo(rest)
    if command == "train":
        from gpkernels.trainer.cli import main as train

        return train(rest, prog=f"{PROG} train")
    if command == "experiments":
        from gpkernels.trainer.experiments import main as experiments

        return experiments(rest, prog=f"{PROG} experiments")
    return _bench(rest)


if __name__ == "__main__":
    sys.exit(main())
