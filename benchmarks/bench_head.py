"""Benchmark of the WGAN-GP "penalty head": interpolate + penalty forward + penalty backward, the path a training
step runs; and, in a table of its own, the penalty op's exact double backward, which training does not run.

What is timed, per configuration (threads, dtype, pass, B, N) and provider, is exactly this work:

    x_hat = alpha_i * real + (1 - alpha_i) * fake     alpha ~ U[0, 1), one per sample, drawn each call
    loss  = 10 * mean_i (||g_i|| - 1)^2                g: a (B, N) stand-in for dD/dx_hat, requires grad
    dg    = d loss / d g                               pass "training": autograd.grad(loss, g)
    d2    = (d dg / d g)^T v                           pass "op-double-backward" only: dg is taken with
                                                       create_graph=True, then autograd.grad(dg, g, v)

Pass "training" is the head's share of a WGAN-GP critic step: in training, g = dD/dx_hat comes from the inner
autograd.grad through the critic, loss.backward() runs the penalty's backward (dg) and then the critic's
second-order backward, whose cost is autograd's and the critic's (bench_step.py times the whole step). Here
x_hat feeds nothing and g is a leaf tensor, so only the head itself is measured, not the critic.

Pass "op-double-backward" differentiates the penalty's backward once more: d2 is what gradgradcheck,
Hessian-vector products of the penalty w.r.t. g, and other higher-order uses need. A WGAN-GP training step
never runs it (its second derivatives are the critic's, not the penalty op's). v is a fixed random (B, N)
tensor; autograd.grad(dg, g, grad_outputs=v) is the same vector-Jacobian product as
autograd.grad((dg * v).sum(), g), without timing an extra multiply-and-sum.

dtypes: fp32, and bf16 where real, fake, g (and v) are bf16. gpkernels accumulates bf16 in fp32 and returns
an fp32 loss; the eager formulas run in bf16 as written (alpha drawn in the input dtype so that x_hat stays
bf16 for every provider, the norm and the loss in bf16).

Providers:
    popular    the formula of the popular WGAN-GP repos: alpha = torch.rand(B, 1) (in the input dtype);
               x_hat = alpha * real + (1 - alpha) * fake; ((g.view(B, -1).norm(2, dim=1) - 1) ** 2).mean() * 10
    best       the best plain-PyTorch eager version: torch.lerp(fake, real, alpha[:, None]),
               torch.linalg.vector_norm(g.flatten(1), dim=1), same loss
    compiled   torch.compile(dynamic=False) of best's first-order part, (real, fake, g, alpha) -> (x_hat, loss),
               alpha drawn eagerly outside; the autograd.grad calls run outside the compiled function, so
               AOTAutograd's compiled backward computes dg. Compiled afresh (torch._dynamo.reset()) for each
               configuration: inductor's CPU kernels bake in torch.get_num_threads() without a guard on it,
               and one cache entry per shape would hit dynamo's recompile limit over the grid. Its first call
               (compile + run) is reported as "compile s". When run as a script without
               TORCHINDUCTOR_CACHE_DIR set, inductor's on-disk caches go to a fresh directory removed at exit,
               so compile times are cold; a throw-away compile of a tiny input first takes the one-time
               set-up (the C++ prefix header) out of them. A configuration whose generated kernels match an
               earlier one's in the same run reuses them and shows a shorter time. For the "op-double-backward"
               pass, the double backward through the compiled graph is tried once per run, first with
               torch's default settings, then with torch._functorch.config.donated_buffer=False (donated
               buffers alone make a compiled backward refuse create_graph=True); when both fail, the table
               says "does not compile: <reason>" and the notes give the messages. Where inductor fails for
               the first-order part, likewise.
    gpkernels  gpkernels.interpolate(real, fake, backend=b) + gpkernels.penalty(g, weight=10, backend=b);
               b = "cpu" on CPU, "cuda" and "triton" on a GPU
    copy       the bandwidth floor: dst.copy_(src) into a preallocated dst, moving as many bytes as the fused
               head must move (below)
    clone      the same copy as src.clone(), which allocates its output on every call as every head does
               for x_hat and dg (on the CPU a fresh large buffer costs page faults on first write)

Bytes moved by a fused head ("GB/s" and the copy floor), e = bytes per element of the dtype (fp32 4, bf16 2):
    interpolate        reads real, fake, writes x_hat       3 * B*N
    penalty forward    reads g                              1 * B*N
    penalty backward   reads g, writes dg                   2 * B*N      training total: 6 * e * B*N
    double backward    reads g, v, writes d2                3 * B*N      op-double-backward total: 9 * e * B*N
(The per-sample alpha, norms, <g_i, v_i> and the scalar loss are O(B) and ignored.) A copy of k elements
reads k and writes k, so the copy floor copies k = 3 * B*N (training) or ceil(4.5 * B*N) (op-double-backward)
elements of the same dtype: the same bytes. GB/s = those bytes / median time, for every provider.

Peak memory ("peak MB", 1 MB = 1e6 bytes): the peak of the memory allocated during one call beyond what was
allocated before it, outputs included, measured on one untimed call after the timing. CUDA:
torch.cuda.reset_peak_memory_stats, then max_memory_allocated() - memory_allocated() before the call. CPU: the
call runs under torch.profiler with profile_memory=True and the "[memory]" events (bytes, + for an allocation,
- for a free) are summed in time order; the peak of that running sum is reported. The raw kineto event list is
used because torch.profiler's events() folds an allocation made inside an op into that op. Each run first
checks the method on the clone of 1e6 fp32 (expect 4.000 MB) and reports "n/a" if it disagrees by > 1%.

Method: before timing a configuration, every provider's x_hat, loss, dg (and d2) are checked against float64
math on the same inputs with the same alpha (gpkernels.reference's interpolate and penalty_terms): relative
error ||got - want|| / ||want|| at most 1e-5 for fp32, 2e-2 for bf16 (bf16 keeps 8 significant bits and the
eager bf16 loss goes through (||g|| - 1)^2 in bf16; the largest error in a trial over B in {64, 1024}, N in
{2, 784, 12288, 49152} was 7e-3, popular's d2); the script aborts on a mismatch. That check call, --warmup
further calls and one calibration call (three when a call is shorter than a sample) warm each provider up
untimed; the calibration sets an inner loop count so that one timed sample takes at least --min-sample-ms;
samples are taken round-robin over the providers (rotating the order each round) so that background load hits
all of them alike; the median and interquartile range of the per-call time over --repeats samples are
reported. CPU timing uses time.perf_counter with torch.set_num_threads(T) for each T of --threads; CUDA timing
uses torch.cuda.Event with synchronisation.

Full mode (no --quick) covers, to finish in about 15 minutes on a 2-core CPU (see FULL_COVERAGE_TEXT):
    1 thread:   B in {64, 256, 1024} x N in {2, 784, 3072, 12288, 49152}, fp32 and bf16, both passes,
                all providers (compiled: training timed, op-double-backward tried once)
    2 threads:  the same grid, fp32 only (bf16 at 2 threads is not timed)
    20 samples per provider and configuration, each >= 2 ms.
--quick (for `make bench`): B in {64, 256} x N in {784, 3072}, fp32, training, 1 thread, 5 samples, no
compiled provider unless --compile is given (its compile time alone would exceed make bench's budget).
Explicit --batch, --features or --dtypes turn the full mode's subsetting off: every combination given is
timed (--threads and --passes only choose what is run).

Targets (from the issue), checked per row on the CPU at 1 thread with N >= 784, for both dtypes and both
passes: gpkernels >= 3x faster than popular eager, >= 1.5x faster than best eager, and at most 1.5x the time
of a plain copy of the same bytes, taken as the allocating copy (clone), since the head allocates its outputs
too; the preallocated copy ratio is reported beside it. On a GPU, per row with B*N >= 1M elements: gpkernels
reaches >= 75% of the preallocated device-to-device copy's GB/s, and is faster than compiled where that is
timed.

Usage (from the repository root):
    PYTHONPATH=. python benchmarks/bench_head.py --threads 1 2      # the full CPU set
    PYTHONPATH=. python benchmarks/bench_head.py --quick            # smoke run for `make bench`
    PYTHONPATH=. python benchmarks/bench_head.py --device cuda
"""

import argparse
import atexit
import math
import os
import shutil
import sys
import tempfile
import time

# Environment for a script run only (an importer keeps its own), set before torch loads:
# - the CPU peak-memory measurement starts and stops torch.profiler once per provider and configuration, and
#   kineto logs a few lines each time; silenced unless the caller chose a level;
# - cold compile times for the compiled provider: inductor's on-disk caches go to a directory of this run's
#   own, removed at exit, unless the caller chose one (torch.profiler would otherwise fix the shared default).
OWN_INDUCTOR_CACHE = None
if __name__ == "__main__":
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")
if __name__ == "__main__" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    OWN_INDUCTOR_CACHE = os.path.join(tempfile.gettempdir(), f"bench_head_inductor_{os.getpid()}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = OWN_INDUCTOR_CACHE
    atexit.register(shutil.rmtree, OWN_INDUCTOR_CACHE, ignore_errors=True)

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # loaded other than as `python benchmarks/bench_head.py`: _common lives beside us
    sys.path.insert(0, HERE)
# _common also puts the repository on sys.path when gpkernels is not importable otherwise.
from _common import (Timer, command_line, environment_lines, first_line, measure_long,  # noqa: E402
                     median_iqr, normwise_rel_err, output_dir, peak_extra_bytes, peak_method_check, write_csv,
                     write_report)

import gpkernels  # noqa: E402
from gpkernels import reference  # noqa: E402
from gpkernels.trainer.plots import pyplot  # noqa: E402

WEIGHT = 10.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PASSES = ("training", "op-double-backward")
RTOL = {"fp32": 1e-5, "bf16": 2e-2}  # see the module docstring
# Elements moved per B*N by a fused head (module docstring).
UNITS = {"training": 6, "op-double-backward": 9}
TARGET_MIN_N = 784
TARGET_VS_POPULAR = 3.0   # gpkernels at least this many times faster than popular eager
TARGET_VS_BEST = 1.5      # ... than best eager
TARGET_VS_COPY = 1.5      # gpkernels time at most this multiple of the copy floor's
GPU_TARGET_MIN_ELEMENTS = 1_000_000
GPU_TARGET_COPY_FRACTION = 0.75

FULL_BATCH = [64, 256, 1024]
FULL_FEATURES = [2, 784, 3072, 12288, 49152]
# What the full mode times beyond 1 thread: the budget (about 15 minutes on 2 cores) does not hold bf16 at
# 2 threads as well.
FULL_COVERAGE_TEXT = ("1 thread: all shapes, fp32 and bf16, both passes; 2 threads: all shapes, fp32 only, "
                      "both passes")


def full_mode_covers(threads, dtype):
    return threads == 1 or dtype == "fp32"


# ----------------------------------------------------------------------------------------------- providers
# Each forward takes (real, fake, g, alpha) and returns (x_hat, loss); alpha=None draws a fresh U[0, 1)
# weight per sample, as a training step does (the draw is part of the timed work for all of them).
# popular and best are copies of the penalty on purpose: what they time is the head alone on a given g, each
# written its own way, not gpkernels.reference's whole penalty through a critic.

def popular_forward(real, fake, g, alpha=None):
    """The formula found in the popular WGAN-GP repositories."""
    B = real.shape[0]
    if alpha is None:
        alpha = torch.rand(B, 1, device=real.device, dtype=real.dtype)
    alpha = alpha.view(B, 1).expand_as(real)
    x_hat = alpha * real + (1 - alpha) * fake
    gp = ((g.view(B, -1).norm(2, dim=1) - 1) ** 2).mean() * WEIGHT
    return x_hat, gp


def best_forward(real, fake, g, alpha=None):
    """The fastest plain eager PyTorch we know: lerp and linalg.vector_norm."""
    B = real.shape[0]
    if alpha is None:
        alpha = torch.rand(B, device=real.device, dtype=real.dtype)
    x_hat = torch.lerp(fake, real, alpha.view(B)[:, None])
    gp = ((torch.linalg.vector_norm(g.flatten(1), dim=1) - 1) ** 2).mean() * WEIGHT
    return x_hat, gp


def gpkernels_forward(backend):
    """gpkernels' fused interpolate and penalty on `backend`."""
    def forward(real, fake, g, alpha=None):
        x_hat = gpkernels.interpolate(real, fake, alpha, backend=backend)
        return x_hat, gpkernels.penalty(g, weight=WEIGHT, backend=backend)
    return forward


def compiled_forward(settings):
    """torch.compile of best_forward, alpha drawn eagerly (the compiled graph takes it as an input).
    `settings`: torch._functorch.config overrides in force for every call (compilation is lazy)."""
    torch._dynamo.reset()  # a fresh compile for this configuration (see the module docstring)
    cf = torch.compile(best_forward, dynamic=False)

    def forward(real, fake, g, alpha=None):
        if alpha is None:
            alpha = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
        if not settings:
            return cf(real, fake, g, alpha)
        with torch._functorch.config.patch(**settings):
            return cf(real, fake, g, alpha)
    return forward


def make_head(forward, dbl, v):
    """The timed work of a pass around `forward`: (x_hat, loss, dg) or (x_hat, loss, dg, d2)."""
    def head(real, fake, g, alpha=None):
        x_hat, loss = forward(real, fake, g, alpha)
        (dg,) = torch.autograd.grad(loss, g, create_graph=dbl)
        if not dbl:
            return x_hat, loss, dg
        (d2,) = torch.autograd.grad(dg, g, grad_outputs=v)
        return x_hat, loss, dg, d2
    return head


def copy_floor(k, dtype, device):
    """A copy of k elements into a preallocated buffer (reads k, writes k)."""
    src = torch.randn(k, device=device).to(dtype)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
    return copy


def clone_floor(k, dtype, device):
    """The same copy, allocating its output each call."""
    src = torch.randn(k, device=device).to(dtype)

    def clone():
        return src.clone()
    return clone


def copy_elements(B, N, pass_):
    """Elements the copy floor copies: half the elements the fused head moves (a copy reads and writes)."""
    return math.ceil(UNITS[pass_] * B * N / 2)


def head_bytes(B, N, dtype, pass_):
    return UNITS[pass_] * B * N * torch.finfo(DTYPES[dtype]).bits // 8


# ----------------------------------------------------------------------------------------------- checking

class CompileFailure(Exception):
    """torch.compile (dynamo, AOTAutograd or inductor) failed for the compiled provider."""


def float64_head(real, fake, g, v, alpha):
    """float64 (x_hat, loss, dg[, d2]) from the same inputs and alpha, by plain autograd on
    gpkernels.reference's interpolation and per-sample penalty terms."""
    x_hat = reference.interpolate(real.double(), fake.double(), alpha.double())
    g64 = g.detach().double().requires_grad_()
    loss = reference.penalty_terms(g64, 1.0, False, WEIGHT, 1.0)[0].mean()
    (dg,) = torch.autograd.grad(loss, g64, create_graph=v is not None)
    if v is None:
        return x_hat, loss, dg
    (d2,) = torch.autograd.grad(dg, g64, grad_outputs=v.double())
    return x_hat, loss.detach(), dg.detach(), d2


def check(where, name, head, real, fake, g, want, alpha, rtol, compiled=False):
    """Run `head` once with `alpha`; abort unless it matches `want` (the float64 reference) to `rtol`.
    Returns the call's wall time (for compiled: the compile). compiled=True turns an exception into
    CompileFailure."""
    t0 = time.perf_counter()
    try:
        got = head(real, fake, g, alpha)
        if real.is_cuda:  # the wall time is the compile's only once the kernels have run
            torch.cuda.synchronize(real.device)
    except Exception as e:  # noqa: BLE001  (any compiler error is a result to report, not a crash)
        if not compiled:
            raise
        raise CompileFailure(e) from e
    wall = time.perf_counter() - t0
    for what, a, b in zip(("x_hat", "loss", "dg", "d2"), got, want):
        err = normwise_rel_err(a, b)
        if not (err <= rtol):
            sys.exit(f"bench_head: CORRECTNESS FAILURE ({where}): {name} {what} differs from float64 math by "
                     f"{err:.3g} relative (> {rtol:g}); not timing.")
    return wall


def short_reason(exc):
    """A few words for the table; the full message goes to the notes."""
    text = str(exc)
    known = [("does not currently support double backward", "AOTAutograd has no double backward"),
             ("donated buffers", "donated buffers refuse create_graph")]
    for needle, words in known:
        if needle in text:
            return words
    return first_line(exc, 70)


# ----------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time the WGAN-GP penalty head (interpolate + penalty forward + backward w.r.t. the "
                    "gradient, optionally its double backward) for popular eager PyTorch, best eager "
                    "PyTorch, torch.compile of the best, gpkernels and a copy floor.",
        epilog="See the module docstring for exactly what is timed, how bytes and memory are counted, and "
               "what the full mode covers.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device to run on (default: cpu)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], metavar="T",
                   help="torch.set_num_threads values; rows for each (default: 1)")
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=None,
                   help="input dtypes (default: fp32 bf16; fp32 with --quick)")
    p.add_argument("--passes", nargs="+", choices=PASSES, default=None,
                   help="work timed (default: both; training with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples per provider and configuration (default: 20; 5 with --quick)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="each timed sample repeats the op until it lasts at least this long (default: 2; "
                        "1 with --quick)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls per provider and configuration after the correctness check's call "
                        "and before the untimed inner-loop calibration (default: 1)")
    p.add_argument("--batch", type=int, nargs="+", default=None, metavar="B",
                   help="batch sizes (default: 64 256 1024; 64 256 with --quick)")
    p.add_argument("--features", type=int, nargs="+", default=None, metavar="N",
                   help="features per sample (default: 2 784 3072 12288 49152; 784 3072 with --quick)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time the torch.compile provider (default: yes; no with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: fewer repeats and shapes, fp32, training, no compile; writes "
                        "bench_head_quick.{csv,md,png}")
    p.add_argument("--out", default=None,
                   help="output directory (default: benchmarks/results/<machine>/, e.g. cpu-amd-epyc-1-2t or "
                        "the GPU's name)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG chart")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default: 0)")
    args = p.parse_args(argv)
    # Subsetting applies only where the grid is the full mode's own default (module docstring).
    args.subset = not args.quick and args.dtypes is None and args.batch is None and args.features is None
    if args.repeats is None:
        args.repeats = 5 if args.quick else 20
    if args.min_sample_ms is None:
        args.min_sample_ms = 1.0 if args.quick else 2.0
    if args.batch is None:
        args.batch = [64, 256] if args.quick else FULL_BATCH
    if args.features is None:
        args.features = [784, 3072] if args.quick else FULL_FEATURES
    if args.dtypes is None:
        args.dtypes = ["fp32"] if args.quick else list(DTYPES)
    if args.passes is None:
        args.passes = ["training"] if args.quick else list(PASSES)
    if args.compile is None:
        args.compile = not args.quick
    if min(args.threads) < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    return args


def gpkernels_backends(device):
    avail = gpkernels.available_backends(device)
    if device.type == "cpu":
        # Triton on CPU means its interpreter: correct, but far too slow to be worth timing.
        return [b for b in ("cpu",) if b in avail]
    return [b for b in ("cuda", "triton") if b in avail]


class CompileState:
    """What the run learnt about torch.compile: the double-backward attempt is made once per run."""

    def __init__(self):
        self.dbl_settings = None   # functorch settings under which double backward compiled, once known
        self.dbl_reason = None     # "does not compile: ..." once the one attempt failed
        self.notes = {}            # full error message -> [first configuration it came from, count]
        self.setup_s = None        # the throw-away compile's wall time


def warm_compiler(device):
    """One throw-away compile on a tiny input, so that inductor's one-time set-up (imports, the C++
    prefix header) is not charged to the first measured configuration. Returns its wall time, or None."""
    t0 = time.perf_counter()
    try:
        x = torch.randn(2, 2, device=device)
        g = torch.randn(2, 2, device=device, requires_grad=True)
        _, loss = compiled_forward({})(x, x, g)
        torch.autograd.grad(loss, g)
    except Exception:  # noqa: BLE001  (the measured configurations report the failure)
        return None
    return time.perf_counter() - t0


def settings_text(settings):
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def compiled_provider(where, dbl, v, real, fake, g, want, alpha, rtol, state):
    """(head or None, status, compile seconds or None) for the compiled provider in this configuration."""
    if dbl and state.dbl_reason is not None:
        return None, state.dbl_reason, None
    tries = [state.dbl_settings] if dbl and state.dbl_settings is not None else (
        [{}, {"donated_buffer": False}] if dbl else [{}])
    for settings in tries:
        head = make_head(compiled_forward(settings), dbl, v)
        try:
            wall = check(where, "compiled", head, real, fake, g, want, alpha, rtol, compiled=True)
        except CompileFailure as e:
            cause = e.__cause__
            label = "default settings" if not settings else settings_text(settings)
            note = state.notes.setdefault(f"{label}: {first_line(cause, 400)}", [where, 0])
            note[1] += 1
            reason = f"does not compile: {short_reason(cause)}"
            continue
        if dbl:
            state.dbl_settings = settings
        return head, "ok" + ("" if not settings else f" ({settings_text(settings)})"), wall
    torch._dynamo.reset()
    if dbl:
        state.dbl_reason = reason
    return None, reason, None


def run_config(threads, dtype, pass_, B, N, device, backends, args, timer, state, peak_ok):
    where = f"{dtype} {pass_} threads={threads} B={B} N={N}"
    dt = DTYPES[dtype]
    dbl = pass_ == "op-double-backward"
    real = torch.randn(B, N, device=device).to(dt)
    fake = torch.randn(B, N, device=device).to(dt)
    # Gradient norms around 1.5, as for a critic near the WGAN-GP regime (the values do not affect timing).
    g = (torch.randn(B, N, device=device) * (1.5 / math.sqrt(N))).to(dt).requires_grad_()
    v = torch.randn(B, N, device=device).to(dt) if dbl else None
    forwards = {"popular": popular_forward, "best": best_forward}
    forwards.update({b: gpkernels_forward(b) for b in backends})
    heads = {name: make_head(f, dbl, v) for name, f in forwards.items()}

    alpha = torch.rand(B, device=device).to(dt)  # the same (representable) alpha for every provider
    want = float64_head(real, fake, g, v, alpha)
    for name, head in heads.items():
        check(where, name, head, real, fake, g, want, alpha, RTOL[dtype])
    status, compile_s = "not run", None
    if args.compile:
        head, status, compile_s = compiled_provider(where, dbl, v, real, fake, g, want, alpha, RTOL[dtype], state)
        if head is not None:
            heads["compiled"] = head
    del want

    fns = {name: (lambda h=h: h(real, fake, g)) for name, h in heads.items()}
    k = copy_elements(B, N, pass_)
    fns["copy"] = copy_floor(k, dt, device)
    fns["clone"] = clone_floor(k, dt, device)
    samples = measure_long(fns, timer, args.repeats, args.min_sample_ms / 1e3, args.warmup)
    stats = {name: median_iqr(s) for name, s in samples.items()}
    peaks = {name: (peak_extra_bytes(fn, device) / 1e6 if peak_ok else None) for name, fn in fns.items()}
    nbytes = head_bytes(B, N, dtype, pass_)

    def ms(name):
        return stats[name][0] * 1e3 if name in stats else None

    def iqr(name):
        return stats[name][1] * 1e3 if name in stats else None

    def gbps(name):
        return nbytes / stats[name][0] / 1e9 if name in stats else None

    rows = []
    for b in backends:
        t = stats[b][0]
        row = {"threads": threads, "dtype": dtype, "pass": pass_, "B": B, "N": N, "backend": b}
        for name, key in (("popular", "popular"), ("best", "best"), ("compiled", "compiled"), (b, "gpkernels"),
                          ("copy", "copy"), ("clone", "clone")):
            row[key + "_ms"] = ms(name)
            row[key + "_iqr_ms"] = iqr(name)
        for name, key in (("popular", "popular"), ("best", "best"), ("compiled", "compiled"), (b, "gpkernels"),
                          ("copy", "copy")):
            row[key + "_GBps"] = gbps(name)
        row.update({
            "compiled_status": status, "compile_s": compile_s,
            "bytes": nbytes, "copy_elements": k,
            "x_popular": stats["popular"][0] / t,
            "x_best": stats["best"][0] / t,
            "x_compiled": stats["compiled"][0] / t if "compiled" in stats else None,
            "per_copy": t / stats["copy"][0],
            "per_clone": t / stats["clone"][0],
        })
        for name, key in (("popular", "popular"), ("best", "best"), ("compiled", "compiled"), (b, "gpkernels"),
                          ("clone", "clone")):
            row[key + "_peak_MB"] = peaks.get(name)
        row["repeats"] = args.repeats
        row["targets"] = verdict(row, device)
        rows.append(row)
    return rows


def verdict(row, device):
    """'-' where no target applies, else 'pass' or 'FAIL (...)' naming the missed targets."""
    missed = []
    if device.type == "cuda":
        if row["B"] * row["N"] < GPU_TARGET_MIN_ELEMENTS:
            return "-"
        if row["gpkernels_GBps"] < GPU_TARGET_COPY_FRACTION * row["copy_GBps"]:
            missed.append(f"GB/s < {GPU_TARGET_COPY_FRACTION:g} copy")
        if row["x_compiled"] is not None and row["x_compiled"] <= 1.0:
            missed.append("not faster than compiled")
    else:
        if row["threads"] != 1 or row["N"] < TARGET_MIN_N:
            return "-"
        if row["x_popular"] < TARGET_VS_POPULAR:
            missed.append(f"x popular < {TARGET_VS_POPULAR:g}")
        if row["x_best"] < TARGET_VS_BEST:
            missed.append(f"x best < {TARGET_VS_BEST:g}")
        if row["per_clone"] > TARGET_VS_COPY:
            missed.append(f"/ clone > {TARGET_VS_COPY:g}")
    return "pass" if not missed else "FAIL (" + ", ".join(missed) + ")"


def threads_label(threads):
    return f"{threads} thread" + ("" if threads == 1 else "s")


def sections(rows):
    """[((threads, dtype, pass), rows)] in run order."""
    out = []
    for r in rows:
        key = (r["threads"], r["dtype"], r["pass"])
        if not out or out[-1][0] != key:
            out.append((key, []))
        out[-1][1].append(r)
    return out


def markdown_table(rows, with_iqr, with_targets, with_compiled):
    multi = len({r["backend"] for r in rows}) > 1

    def ms(r, key):
        if r[key + "_ms"] is None:
            return r["compiled_status"] if key == "compiled" else "-"
        return f"{r[key + '_ms']:.4g} ({r[key + '_iqr_ms']:.2g})" if with_iqr else f"{r[key + '_ms']:.4g}"

    def ratio(x):
        return "-" if x is None else f"{x:.2f}"

    providers = ["popular", "best"] + (["compiled"] if with_compiled else []) + ["gpkernels", "copy", "clone"]
    head = ["B", "N"] + (["backend"] if multi else []) + [f"{p} ms" for p in providers] + [
        "gpkernels GB/s", "copy GB/s", "x popular", "x best"] + (["x compiled"] if with_compiled else []) + [
        "/ copy", "/ clone", "gpkernels peak MB"]
    if with_targets:
        head.append("targets")
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(":---" if h in ("backend", "targets") else "---:" for h in head) + "|"]
    for r in rows:
        peak = r["gpkernels_peak_MB"]
        cells = [str(r["B"]), str(r["N"])] + ([r["backend"]] if multi else []) + [ms(r, p) for p in providers] + [
            f"{r['gpkernels_GBps']:.3g}", f"{r['copy_GBps']:.3g}", ratio(r["x_popular"]), ratio(r["x_best"])] + (
            [ratio(r["x_compiled"])] if with_compiled else []) + [
            ratio(r["per_copy"]), ratio(r["per_clone"]), "n/a" if peak is None else f"{peak:.3g}"]
        if with_targets:
            cells.append(r["targets"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(rows, with_compiled):
    """Peak extra MB per provider, one row per (dtype, pass, B, N, backend) at the first thread count."""
    first = rows[0]["threads"]
    providers = ["popular", "best"] + (["compiled"] if with_compiled else []) + ["gpkernels", "clone"]
    head = ["dtype", "pass", "B", "N", "backend"] + providers
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(":---" if h in ("dtype", "pass", "backend") else "---:" for h in head) + "|"]
    for r in rows:
        if r["threads"] != first:
            continue
        cells = [r["dtype"], r["pass"], str(r["B"]), str(r["N"]), r["backend"]] + [
            "-" if r[p + "_peak_MB"] is None else f"{r[p + '_peak_MB']:.3g}" for p in providers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compile_table(rows):
    """Compile time (first call's wall time) and status per configuration where compiled was attempted."""
    head = ["threads", "dtype", "pass", "B", "N", "compile s (first call)", "status"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(":---" if h in ("dtype", "pass", "status") else "---:" for h in head) + "|"]
    seen = set()
    for r in rows:
        key = (r["threads"], r["dtype"], r["pass"], r["B"], r["N"])
        if key in seen:
            continue
        seen.add(key)
        cells = [str(r["threads"]), r["dtype"], r["pass"], str(r["B"]), str(r["N"]),
                 "-" if r["compile_s"] is None else f"{r['compile_s']:.2f}", r["compiled_status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    """Per (dtype, pass) at the first thread count: achieved GB/s against B*N for every provider, and
    gpkernels' speed-ups per shape. Returns False when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False

    first = rows[0]["threads"]
    backend = rows[0]["backend"]
    groups = [(key, rs) for key, rs in sections(rows) if key[0] == first]
    fig, axes = plt.subplots(len(groups), 2, figsize=(14, 4.2 * len(groups)), squeeze=False)
    # One colour and marker per provider in every panel, whichever providers a panel has.
    colours = plt.get_cmap("tab10").colors
    style = {"popular": ("o", colours[0]), "best": ("s", colours[1]), "compiled": ("D", colours[2]),
             "gpkernels": ("^", colours[3]), "copy": ("x", colours[7])}
    for (threads, dtype, pass_), rs in groups:
        ax_bw, ax_x = axes[groups.index(((threads, dtype, pass_), rs))]
        rs = sorted((r for r in rs if r["backend"] == backend), key=lambda r: (r["B"] * r["N"], r["B"]))
        size = [r["B"] * r["N"] for r in rs]
        for p, (m, c) in style.items():
            y = [r[p + "_GBps"] for r in rs]
            pts = [(s, v) for s, v in zip(size, y) if v is not None]
            if pts:
                label = f"gpkernels ({backend})" if p == "gpkernels" else p
                ax_bw.plot(*zip(*pts), marker=m, color=c, linestyle="-" if p != "copy" else "--", label=label)
        failed = {r["compiled_status"] for r in rs if r["compiled_status"].startswith("does not compile")}
        for text in sorted(failed):  # a legend line, so that a missing curve is explained
            ax_bw.plot([], [], " ", label="compiled: " + text)
        ax_bw.set_xscale("log")
        ax_bw.set_yscale("log")
        ax_bw.set_xlabel("B x N (elements per tensor)")
        ax_bw.set_ylabel("GB/s (fused-head bytes / median time)")
        ax_bw.set_title(f"{dtype}, {pass_}, {threads_label(threads)}: achieved bandwidth", fontsize=10)
        ax_bw.grid(True, which="both", alpha=0.3)
        ax_bw.legend(fontsize=7, loc="best")

        labels = [f"{r['B']}x{r['N']}" for r in rs]
        series = [("x popular", "x_popular", style["popular"][1]), ("x best", "x_best", style["best"][1]),
                  ("x compiled", "x_compiled", style["compiled"][1])]
        series = [s for s in series if any(r[s[1]] is not None for r in rs)]
        width = 0.8 / len(series)
        for j, (lab, key, c) in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(rs))]
            ax_x.bar(xs, [r[key] or 0 for r in rs], width, label=lab, color=c)
        for level, dash in ((TARGET_VS_POPULAR, ":"), (TARGET_VS_BEST, "--"), (1.0, "-")):
            ax_x.axhline(level, color="grey", linestyle=dash, linewidth=0.8)
        ax_x.set_xticks(range(len(rs)))
        ax_x.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax_x.set_ylabel("their time / gpkernels time (> 1: gpkernels faster)")
        ax_x.set_title(f"{dtype}, {pass_}, {threads_label(threads)}: gpkernels' speed-up (lines: "
                       f"{TARGET_VS_POPULAR:g}, {TARGET_VS_BEST:g}, 1)", fontsize=10)
        ax_x.set_xlabel("B x N")
        ax_x.legend(fontsize=7, loc="best")
    fig.suptitle("WGAN-GP penalty head (bench_head.py)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the suptitle
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def configurations(args):
    for threads in args.threads:
        for dtype in args.dtypes:
            if args.subset and not full_mode_covers(threads, dtype):
                continue
            for pass_ in args.passes:
                for B in args.batch:
                    for N in args.features:
                        yield threads, dtype, pass_, B, N


def main(argv=None):
    t_start = time.perf_counter()  # the reported wall time includes the compiler set-up and the checks
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_head: --device cuda but torch.cuda.is_available() is False")
    backends = gpkernels_backends(device)
    if not backends:
        sys.exit(f"bench_head: no gpkernels backend to time on {device}: {gpkernels.backend_report()}")
    timer = Timer(device)
    # Other processes on the cores skew every timing, multi-threaded OpenMP ones worst (a descheduled thread
    # stalls its team at each barrier): say so up front and in the header.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load >= 0.5:
        print(f"bench_head: load average {load:.2f} before the run: other processes are busy, timings will be "
              f"noisy (at 2+ threads badly so)", file=sys.stderr)
    torch.set_num_threads(args.threads[0])
    peak_got, peak_want = peak_method_check(device)
    peak_ok = abs(peak_got - peak_want) <= 0.01 * peak_want
    if not peak_ok:
        print(f"bench_head: peak-memory method gives {peak_got / 1e6:.3f} MB for a clone of "
              f"{peak_want / 1e6:.3f} MB; peak memory reported as n/a", file=sys.stderr)
    state = CompileState()
    if args.compile:
        state.setup_s = warm_compiler(device)

    rows = []
    configs = list(configurations(args))
    for i, (threads, dtype, pass_, B, N) in enumerate(configs, 1):
        torch.set_num_threads(threads)
        torch.manual_seed(args.seed)  # the same data for every thread count
        t0 = time.perf_counter()
        new = run_config(threads, dtype, pass_, B, N, device, backends, args, timer, state, peak_ok)
        rows += new
        speed = ", ".join(f"{r['backend']} {r['gpkernels_ms']:.3g} ms x{r['x_popular']:.2f} popular "
                          f"x{r['x_best']:.2f} best "
                          + (f"x{r['x_compiled']:.2f} compiled " if r["x_compiled"] is not None else "")
                          + f"{r['per_clone']:.2f}/clone" for r in new)
        print(f"[{i}/{len(configs)}] {dtype} {pass_} threads={threads} B={B} N={N}: {speed} "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    wall_s = time.perf_counter() - t_start

    with_compiled = args.compile
    judged = [r for r in rows if r["targets"] != "-"]
    failed = [r for r in judged if r["targets"] != "pass"]
    for (threads, dtype, pass_), rs in sections(rows):
        print(f"\n{dtype}, {pass_}, {threads_label(threads)}")
        print(markdown_table(rs, with_iqr=False, with_targets=False, with_compiled=with_compiled))
    if device.type == "cuda":
        target_text = (f"at B*N >= {GPU_TARGET_MIN_ELEMENTS:,} (>= {GPU_TARGET_COPY_FRACTION:g} of the "
                       f"copy's GB/s, faster than compiled where timed)")
    else:
        target_text = (f"at 1 thread, N >= {TARGET_MIN_N} (>= {TARGET_VS_POPULAR:g}x popular, "
                       f">= {TARGET_VS_BEST:g}x best, <= {TARGET_VS_COPY:g}x clone)")
    print(f"\ntargets {target_text}: {len(judged) - len(failed)}/{len(judged)} rows pass")
    for r in failed:
        print(f"  {r['dtype']} {r['pass']} B={r['B']} N={r['N']} {r['backend']}: {r['targets']}")
    print(f"wall time {wall_s:.0f} s")

    threads_text = " ".join(map(str, args.threads))
    out = output_dir(args.out, device, args.threads)
    stem = "bench_head_quick" if args.quick else "bench_head"
    write_csv(os.path.join(out, stem + ".csv"), rows)
    command = command_line("bench_head", argv)
    if args.subset:
        coverage = f"full mode: {FULL_COVERAGE_TEXT}"
    else:
        coverage = ("every combination of threads " + threads_text + ", dtypes " + " ".join(args.dtypes)
                    + ", passes " + " ".join(args.passes) + ", B " + " ".join(map(str, args.batch))
                    + ", N " + " ".join(map(str, args.features)))
    md = [
        "# Penalty head benchmark (bench_head.py)",
        "",
        "Timed work per call: `x_hat = interpolate(real, fake)` (fresh alpha ~ U[0,1) per sample), "
        "`loss = 10 * mean_i (||g_i|| - 1)^2`, `dg = autograd.grad(loss, g)` (pass training: the head's share "
        "of a WGAN-GP training step); pass op-double-backward takes dg with `create_graph=True` and adds "
        "`autograd.grad(dg, g, grad_outputs=v)` for a fixed random v: the penalty op's exact double backward, "
        "for gradgradcheck, Hessian-vector products and higher-order uses, which a training step never runs. "
        "real, fake, g (, v): (B, N) in the row's dtype.",
        "popular: `alpha*real + (1-alpha)*fake`, `g.view(B,-1).norm(2, dim=1)`; best: `torch.lerp`, "
        "`torch.linalg.vector_norm`; compiled: `torch.compile(dynamic=False)` of best's (x_hat, loss), the "
        "gradients taken outside it; gpkernels: `gpkernels.interpolate` + `gpkernels.penalty`.",
        "GB/s counts the bytes a fused head must move: e x B*N x (3 interpolate + 1 penalty forward + "
        "2 backward [+ 3 double backward]), e = 4 (fp32) or 2 (bf16); copy is `dst.copy_(src)` of half that "
        "many elements of the dtype (the same bytes) into a preallocated buffer, clone is `src.clone()` of the "
        "same, allocating its output as the heads do.",
        "x popular / x best / x compiled: speed-up of gpkernels (their time / gpkernels time); / copy, / clone: "
        "gpkernels time / copy or clone time. peak MB: the most memory allocated during one call beyond what "
        "was allocated before it, outputs included (1 MB = 1e6 bytes).",
        "",
        *environment_lines(device, threads=threads_text),
        f"- command: `{command}`",
        f"- covers: {coverage}",
        f"- gpkernels backends timed: {', '.join(backends)}",
        f"- {args.repeats} samples per provider and configuration, each >= {args.min_sample_ms:g} ms (inner "
        f"loop), taken round-robin after untimed warm-up calls (the correctness check's, {args.warmup} more, and "
        f"1-3 calibration calls); median per-call ms, interquartile range in parentheses",
        f"- correctness checked before timing against float64 math with the same alpha: normwise relative "
        f"error <= {RTOL['fp32']:g} (fp32), {RTOL['bf16']:g} (bf16) for x_hat, loss, dg (and d2)",
        "- peak memory: " + ("torch.cuda max_memory_allocated after reset_peak_memory_stats"
                             if device.type == "cuda" else
                             "running sum of torch.profiler's [memory] events (profile_memory=True)")
        + f"; method check: clone of {peak_want / 1e6:.3f} MB measured as {peak_got / 1e6:.3f} MB"
        + ("" if peak_ok else " (disagrees: peak memory n/a)"),
    ]
    if args.compile:
        md.append("- compiled: torch.compile(dynamic=False), compiled afresh per configuration, inductor cache "
                  + ("a fresh directory for this run" if OWN_INDUCTOR_CACHE else
                     f"the caller's {os.environ['TORCHINDUCTOR_CACHE_DIR']} (compile times may be warm)")
                  + "; one-time compiler set-up (throw-away compile of a 2x2 input): "
                  + ("failed" if state.setup_s is None else f"{state.setup_s:.1f} s"))
    else:
        md.append("- compiled: not run (pass --compile to include torch.compile)")
    md += [
        f"- run wall time: {wall_s:.0f} s"
        + ("" if load is None else f"; 1-minute load average before the run: {load:.2f}"),
        "",
        f"Targets, judged {target_text}: {len(judged) - len(failed)}/{len(judged)} rows pass.",
        "",
    ]
    for (threads, dtype, pass_), rs in sections(rows):
        md += [f"## {dtype}, {pass_}, {threads_label(threads)}", "",
               markdown_table(rs, with_iqr=True, with_targets=True, with_compiled=with_compiled), ""]
    if args.compile:
        md += ["## torch.compile: compile time and status", "",
               "compile s: wall time of the compiled head's first call (dynamo + AOTAutograd + inductor for "
               "forward and backward, and one run).", "", compile_table(rows), ""]
        if state.notes:
            md += ["Compile errors, in full (the first configuration that gave each, and how many did):", ""]
            md += [f"- {where} ({count}x), {text}" for text, (where, count) in state.notes.items()] + [""]
    md += [f"## Peak extra memory per call (MB), {threads_label(rows[0]['threads'])}", "",
           memory_table(rows, with_compiled), ""]
    write_report(out, stem, md, rows, plot, args.no_plot, "bench_head")


if __name__ == "__main__":
    main()
