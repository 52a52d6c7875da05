"""Benchmark of the WGAN-GP "penalty head": interpolate + penalty forward + penalty backward.

What is timed, per shape (B, N), fp32, for every provider, is exactly this work:

    x_hat = alpha_i * real + (1 - alpha_i) * fake     alpha ~ U[0, 1), one per sample, drawn each call
    loss  = 10 * mean_i (||g_i|| - 1)^2                g: a (B, N) stand-in for dD/dx_hat, requires grad
    dg    = d loss / d g                               the gradient that flows back toward the critic

(In training, g = dD/dx_hat comes from a double-backward through the critic; here x_hat feeds nothing
and g is a leaf tensor, so only the head itself is measured, not the critic.)

Providers:
    popular    the formula of the popular WGAN-GP repos: alpha = torch.rand(B, 1);
               x_hat = alpha * real + (1 - alpha) * fake; ((g.view(B, -1).norm(2, dim=1) - 1) ** 2).mean() * 10;
               torch.autograd.grad(gp, g)
    best       the best plain-PyTorch eager version: torch.lerp(fake, real, alpha[:, None]),
               torch.linalg.vector_norm(g.flatten(1), dim=1), same loss, torch.autograd.grad
    gpkernels  gpkernels.interpolate(real, fake, backend=b) + gpkernels.penalty(g, weight=10, backend=b),
               torch.autograd.grad; b = "cpu" on CPU, "cuda" and "triton" on a GPU
    copy       the bandwidth floor: dst.copy_(src) into a preallocated dst, moving as many bytes as the fused
               head must move (below)
    clone      the same copy as src.clone(), which allocates its output on every call as every head does
               for x_hat and dg (on the CPU a fresh large buffer costs page faults on first write)

Bytes moved by a fused head (the "GB/s" column and the copy floor), fp32 = 4 bytes per element:
    interpolate        reads real, fake, writes x_hat       3 * B*N
    penalty forward    reads g                              1 * B*N
    penalty backward   reads g, writes dg                   2 * B*N
    total              bytes = 6 * 4 * B*N
A copy of k fp32 elements reads k and writes k elements (8k bytes), so the copy floor copies
k = 3 * B*N elements. (The per-sample alpha, norms and the scalar loss are O(B) and ignored.)

Method: before timing a shape, the gpkernels loss, dg and x_hat are checked against the popular formula with
the same alpha (1e-5 relative; the script aborts on a mismatch). Each provider is warmed up, then an inner
loop count is chosen so that one timed sample takes at least --min-sample-ms; samples are taken round-robin
over the providers (rotating the order each round) so that background load hits all of them alike; the
median and interquartile range of the per-call time over --repeats samples are reported. CPU timing uses
time.perf_counter with torch.set_num_threads(--threads); CUDA timing uses torch.cuda.Event with
synchronisation.

Targets (from the issue), checked per row with N >= 784: gpkernels >= 3x faster than popular eager,
>= 1.5x faster than best eager, and at most 1.5x the time of a plain copy of the same bytes, taken as the
allocating copy (clone), since the head allocates its outputs too; the preallocated copy ratio is reported
beside it.

Usage (from the repository root):
    PYTHONPATH=. python benchmarks/bench_head.py --threads 1
    PYTHONPATH=. python benchmarks/bench_head.py --quick            # smoke run for `make bench`
    PYTHONPATH=. python benchmarks/bench_head.py --device cuda
"""

import argparse
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # loaded other than as `python benchmarks/bench_head.py`: _common lives beside us
    sys.path.insert(0, HERE)
# _common also puts the repository on sys.path when gpkernels is not importable otherwise.
from _common import REPO, Timer, environment_lines, machine_name, measure, median_iqr, write_csv  # noqa: E402

import gpkernels  # noqa: E402
WEIGHT = 10.0
RTOL = 1e-5
TARGET_MIN_N = 784
TARGET_VS_POPULAR = 3.0   # gpkernels at least this many times faster than popular eager
TARGET_VS_BEST = 1.5      # ... than best eager
TARGET_VS_COPY = 1.5      # gpkernels time at most this multiple of the copy floor's


# ----------------------------------------------------------------------------------------------- providers
# Each head provider takes (real, fake, g, alpha) and returns (x_hat, loss, dg); alpha=None draws a fresh
# U[0, 1) weight per sample, as a training step does (the draw is part of the timed work for all of them).

def popular_eager(real, fake, g, alpha=None):
    """The formula found in the popular WGAN-GP repositories."""
    B = real.shape[0]
    if alpha is None:
        alpha = torch.rand(B, 1, device=real.device)
    alpha = alpha.view(B, 1).expand_as(real)
    x_hat = alpha * real + (1 - alpha) * fake
    gp = ((g.view(B, -1).norm(2, dim=1) - 1) ** 2).mean() * WEIGHT
    (dg,) = torch.autograd.grad(gp, g)
    return x_hat, gp, dg


def best_eager(real, fake, g, alpha=None):
    """The fastest plain eager PyTorch we know: lerp and linalg.vector_norm."""
    B = real.shape[0]
    if alpha is None:
        alpha = torch.rand(B, device=real.device)
    x_hat = torch.lerp(fake, real, alpha.view(B)[:, None])
    gp = ((torch.linalg.vector_norm(g.flatten(1), dim=1) - 1) ** 2).mean() * WEIGHT
    (dg,) = torch.autograd.grad(gp, g)
    return x_hat, gp, dg


def gpkernels_head(backend):
    """gpkernels' fused interpolate and penalty on `backend`."""
    def head(real, fake, g, alpha=None):
        x_hat = gpkernels.interpolate(real, fake, alpha, backend=backend)
        gp = gpkernels.penalty(g, weight=WEIGHT, backend=backend)
        (dg,) = torch.autograd.grad(gp, g)
        return x_hat, gp, dg
    head.__name__ = f"gpkernels_{backend}"
    return head


def copy_floor(B, N, device):
    """A copy moving the fused head's bytes: k = 3*B*N fp32 elements read and written (24*B*N bytes)."""
    src = torch.randn(3 * B * N, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
    return copy


def clone_floor(B, N, device):
    """The same copy, allocating its output each call: src.clone() of k = 3*B*N fp32 elements."""
    src = torch.randn(3 * B * N, device=device)

    def clone():
        return src.clone()
    return clone


def head_bytes(B, N):
    """Bytes a fused head must move: 4 bytes * B*N * (3 interpolate + 1 penalty forward + 2 backward)."""
    return 4 * B * N * 6


# ----------------------------------------------------------------------------------------------- checking

def rel_err(got, want):
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def check(name, head, real, fake, g):
    """Abort unless `head` matches popular_eager (same alpha) to RTOL in loss, dg and x_hat."""
    alpha = torch.rand(real.shape[0], device=real.device)
    want = popular_eager(real, fake, g, alpha)
    got = head(real, fake, g, alpha)
    for what, a, b in zip(("x_hat", "loss", "dg"), got, want):
        err = rel_err(a, b)
        if not (err <= RTOL):
            sys.exit(f"bench_head: CORRECTNESS FAILURE: {name} {what} differs from the popular formula by "
                     f"{err:.3g} relative (> {RTOL:g}) at B={real.shape[0]}, N={real.shape[1]}; not timing.")


# ----------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time the WGAN-GP penalty head (interpolate + penalty forward + backward w.r.t. the "
                    "gradient) for popular eager PyTorch, best eager PyTorch, gpkernels and a copy floor.",
        epilog="See the module docstring for exactly what is timed and how bytes are counted.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device to run on (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for CPU runs (default: 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples per provider and shape (default: 20; 5 with --quick)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="each timed sample repeats the op until it lasts at least this long (default: 2; "
                        "1 with --quick)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per provider and shape (default: 3)")
    p.add_argument("--batch", type=int, nargs="+", default=None, metavar="B",
                   help="batch sizes (default: 64 256 1024; 64 256 with --quick)")
    p.add_argument("--features", type=int, nargs="+", default=None, metavar="N",
                   help="features per sample (default: 2 784 3072 12288; 784 3072 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: fewer repeats and shapes; writes bench_head_quick.{csv,md}")
    p.add_argument("--out", default=None,
                   help="output directory (default: benchmarks/results/<machine>/, e.g. cpu-amd-epyc-1t or "
                        "the GPU's name)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default: 0)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 20
    if args.min_sample_ms is None:
        args.min_sample_ms = 1.0 if args.quick else 2.0
    if args.batch is None:
        args.batch = [64, 256] if args.quick else [64, 256, 1024]
    if args.features is None:
        args.features = [784, 3072] if args.quick else [2, 784, 3072, 12288]
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    return args


def gpkernels_backends(device):
    avail = gpkernels.available_backends(device)
    if device.type == "cpu":
        # Triton on CPU means its interpreter: correct, but far too slow to be worth timing.
        return [b for b in ("cpu",) if b in avail]
    return [b for b in ("cuda", "triton") if b in avail]


def run_shape(B, N, device, backends, args, timer):
    real = torch.randn(B, N, device=device)
    fake = torch.randn(B, N, device=device)
    # Gradient norms around 1.5, as for a critic near the WGAN-GP regime (the values do not affect timing).
    g = (torch.randn(B, N, device=device) * (1.5 / math.sqrt(N))).requires_grad_()
    heads = {"popular": popular_eager, "best": best_eager}
    heads.update({b: gpkernels_head(b) for b in backends})
    for name in ["best"] + backends:
        check(name, heads[name], real, fake, g)
    fns = {name: (lambda h=h: h(real, fake, g)) for name, h in heads.items()}
    fns["copy"] = copy_floor(B, N, device)
    fns["clone"] = clone_floor(B, N, device)
    samples = measure(fns, timer, args.repeats, args.min_sample_ms / 1e3, args.warmup)
    stats = {name: median_iqr(s) for name, s in samples.items()}
    rows = []
    for b in backends:
        t = stats[b][0]
        row = {
            "B": B, "N": N, "backend": b,
            "popular_ms": stats["popular"][0] * 1e3, "popular_iqr_ms": stats["popular"][1] * 1e3,
            "best_ms": stats["best"][0] * 1e3, "best_iqr_ms": stats["best"][1] * 1e3,
            "gpkernels_ms": t * 1e3, "gpkernels_iqr_ms": stats[b][1] * 1e3,
            "copy_ms": stats["copy"][0] * 1e3, "copy_iqr_ms": stats["copy"][1] * 1e3,
            "clone_ms": stats["clone"][0] * 1e3, "clone_iqr_ms": stats["clone"][1] * 1e3,
            "bytes": head_bytes(B, N),
            "gpkernels_GBps": head_bytes(B, N) / t / 1e9,
            "copy_GBps": head_bytes(B, N) / stats["copy"][0] / 1e9,
            "x_popular": stats["popular"][0] / t,
            "x_best": stats["best"][0] / t,
            "per_copy": t / stats["copy"][0],
            "per_clone": t / stats["clone"][0],
        }
        row["targets"] = verdict(row)
        rows.append(row)
    return rows


def verdict(row):
    """'-' below TARGET_MIN_N, else 'pass' or 'FAIL (...)' naming the missed targets."""
    if row["N"] < TARGET_MIN_N:
        return "-"
    missed = []
    if row["x_popular"] < TARGET_VS_POPULAR:
        missed.append(f"x popular < {TARGET_VS_POPULAR:g}")
    if row["x_best"] < TARGET_VS_BEST:
        missed.append(f"x best < {TARGET_VS_BEST:g}")
    if row["per_clone"] > TARGET_VS_COPY:
        missed.append(f"/ clone > {TARGET_VS_COPY:g}")
    return "pass" if not missed else "FAIL (" + ", ".join(missed) + ")"


def markdown_table(rows, with_iqr, with_targets):
    multi = len({r["backend"] for r in rows}) > 1

    def ms(r, key):
        return f"{r[key + '_ms']:.4g} ({r[key + '_iqr_ms']:.2g})" if with_iqr else f"{r[key + '_ms']:.4g}"

    head = ["B", "N"] + (["backend"] if multi else []) + [
        "popular ms", "best ms", "gpkernels ms", "copy ms", "clone ms", "gpkernels GB/s", "x popular", "x best",
        "/ copy", "/ clone"]
    if with_targets:
        head.append("targets")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for r in rows:
        cells = [str(r["B"]), str(r["N"])] + ([r["backend"]] if multi else []) + [
            ms(r, "popular"), ms(r, "best"), ms(r, "gpkernels"), ms(r, "copy"), ms(r, "clone"),
            f"{r['gpkernels_GBps']:.3g}", f"{r['x_popular']:.2f}", f"{r['x_best']:.2f}", f"{r['per_copy']:.2f}",
            f"{r['per_clone']:.2f}"]
        if with_targets:
            cells.append(r["targets"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(device, args, backends, wall_s):
    return [
        *environment_lines(device),
        f"- gpkernels backends timed: {', '.join(backends)}",
        f"- fp32; {args.repeats} samples per provider and shape, each >= {args.min_sample_ms:g} ms "
        f"(inner loop), taken round-robin; median per-call ms, interquartile range in parentheses",
        f"- run wall time: {wall_s:.0f} s",
    ]


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_head: --device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    backends = gpkernels_backends(device)
    if not backends:
        sys.exit(f"bench_head: no gpkernels backend to time on {device}: {gpkernels.backend_report()}")
    timer = Timer(device)

    t_start = time.perf_counter()
    rows = []
    shapes = [(B, N) for B in args.batch for N in args.features]
    for i, (B, N) in enumerate(shapes, 1):
        t0 = time.perf_counter()
        new = run_shape(B, N, device, backends, args, timer)
        rows += new
        speed = ", ".join(f"{r['backend']} {r['gpkernels_ms']:.3g} ms x{r['x_popular']:.2f} popular "
                          f"x{r['x_best']:.2f} best {r['per_clone']:.2f}/clone" for r in new)
        print(f"[{i}/{len(shapes)}] B={B} N={N}: {speed} ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)
    wall_s = time.perf_counter() - t_start

    print(markdown_table(rows, with_iqr=False, with_targets=False))
    judged = [r for r in rows if r["N"] >= TARGET_MIN_N]
    failed = [r for r in judged if r["targets"] != "pass"]
    print(f"\ntargets at N >= {TARGET_MIN_N} (>= {TARGET_VS_POPULAR:g}x popular, >= {TARGET_VS_BEST:g}x best, "
          f"<= {TARGET_VS_COPY:g}x clone): {len(judged) - len(failed)}/{len(judged)} rows pass")
    for r in failed:
        print(f"  B={r['B']} N={r['N']} {r['backend']}: {r['targets']}")
    print(f"wall time {wall_s:.0f} s")

    out = args.out or os.path.join(REPO, "benchmarks", "results", machine_name(device, args.threads))
    os.makedirs(out, exist_ok=True)
    stem = "bench_head_quick" if args.quick else "bench_head"
    write_csv(os.path.join(out, stem + ".csv"), rows)
    md = [
        "# Penalty head benchmark (bench_head.py)",
        "",
        "Timed work per call: `x_hat = interpolate(real, fake)` (fresh alpha ~ U[0,1) per sample), "
        "`loss = 10 * mean_i (||g_i|| - 1)^2`, `dg = autograd.grad(loss, g)`; real, fake, g: (B, N) fp32.",
        "popular: `alpha*real + (1-alpha)*fake`, `g.view(B,-1).norm(2, dim=1)`; best: `torch.lerp`, "
        "`torch.linalg.vector_norm`; gpkernels: `gpkernels.interpolate` + `gpkernels.penalty`.",
        "GB/s counts the bytes a fused head must move: 4 B x B*N x (3 interpolate + 1 penalty forward + "
        "2 backward) = 24*B*N; copy is `dst.copy_(src)` of 3*B*N fp32 elements (the same 24*B*N bytes) into a "
        "preallocated buffer, clone is `src.clone()` of the same, allocating its output as the heads do.",
        "x popular / x best: speed-up of gpkernels (their time / gpkernels time); / copy, / clone: gpkernels "
        "time / copy or clone time.",
        "",
        *header(device, args, backends, wall_s),
        "",
        f"Targets, judged at N >= {TARGET_MIN_N}: gpkernels >= {TARGET_VS_POPULAR:g}x faster than popular "
        f"eager, >= {TARGET_VS_BEST:g}x faster than best eager, and within {TARGET_VS_COPY:g}x of clone. "
        f"{len(judged) - len(failed)}/{len(judged)} rows pass.",
        "",
        markdown_table(rows, with_iqr=True, with_targets=True),
        "",
    ]
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write("\n".join(md))
    print(f"wrote {os.path.join(out, stem + '.csv')} and {stem}.md", file=sys.stderr)


if __name__ == "__main__":
    main()
