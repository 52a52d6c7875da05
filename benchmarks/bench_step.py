"""Benchmark of one whole WGAN-GP critic step: what the penalty costs against a critic step without it.

What is timed, per critic, fp32, CPU, for every provider, is one critic training step

    opt.zero_grad(set_to_none=True)
    loss = D(fake).mean() - D(real).mean() [+ penalty]     real, fake: fixed tensors (fake is detached:
    loss.backward()                                        the generator is not part of the critic step)
    opt.step()                                             Adam(lr 1e-4, betas (0.5, 0.9)) for every provider

Each provider has its own deep copy of the critic (same initial weights) and its own optimizer, so that the
parameter updates of one provider's steps never reach another's.

Providers:
    plain             the step above without a penalty: the unit every other row is divided by
    gp-popular        the penalty as most WGAN-GP code writes it from the paper, in plain autograd:
                      gpkernels.reference.gradient_penalty(D, real, fake): alpha = torch.rand(B);
                      x = alpha * real + (1 - alpha) * fake (alpha viewed as (B, 1, ..., 1));
                      x.requires_grad_(True); g = autograd.grad(D(x).sum(), x, create_graph=True)[0];
                      gp = 10 * ((g.reshape(B, -1).norm(2, dim=1) - 1) ** 2).mean()
    gp-best           the best eager formula we know: x = torch.lerp(fake, real, alpha) (one kernel);
                      g = autograd.grad(D(x).sum(), x, create_graph=True)[0];
                      gp = 10 * ((torch.linalg.vector_norm(g.flatten(1), dim=1) - 1) ** 2).mean()
    gp-gpkernels      gpkernels.gradient_penalty(D, real, fake, backend="cpu")
    gp-lazy4          gpkernels.GradientPenalty(lazy=4, backend="cpu"): 4 critic steps per timed call, the
                      time divided by 4 (the amortised cost per step). One step in 4 adds the penalty
                      (weight 4 * 10); the other three are plain steps (the module returns a zero).
    fd                gpkernels.finite_difference_penalty(D, real, fake, backend="cpu"): two more critic
                      forwards on each real-fake line, no double backward
    gp-func-eager     the whole step's loss as a function of the parameters with torch.func:
                      loss(p) = D_p(fake).mean() - D_p(real).mean() + 10 * mean((||g|| - 1)^2),
                      g = torch.func.grad(x -> D_p(x).sum())(lerp(fake, real, alpha)),
                      D_p = torch.func.functional_call(D, p, .); grads, loss = torch.func.grad_and_value(loss)(p);
                      the grads are assigned to .grad and opt.step() runs as for the others
    gp-func-compiled  the same function under torch.compile (default Inductor backend): the strongest thing
                      a user could do instead, since torch.func's nested grad compiles as one graph where
                      autograd.grad(create_graph=True) under torch.compile raises. The wall time of its first
                      call (tracing and code generation included, with empty Inductor caches unless
                      --warm-compile-cache) is reported separately as compile time. With --quick it runs only
                      if --compile is given: compiling costs ~5-45 s per critic and thread count here, more
                      than the rest of the quick run.

Critics (none has BatchNorm, as WGAN-GP's critic has none; see _critics.py):
    mlp        Linear(2,512)-ReLU-(Linear(512,512)-ReLU)x2-Linear(512,1): the paper's toy critic, B = 256
    dcgan32    DCGAN-style 4x4 stride-2 convolutions 64-128-256, LeakyReLU(0.2), on 3x32x32, B = 64
    resnet32   a small pre-activation ResNet without normalisation, 64 channels, on 3x32x32, B = 64
               (not with --quick)
    dcgan64    the DCGAN critic with one more stage (512 channels) on 3x64x64, B = 64 (not with --quick)
    <name>-inplace  the same critic with in-place activations (nn.ReLU(True), nn.LeakyReLU(0.2, True)), as
               most public WGAN-GP code writes them; timed for plain, gp-popular, gp-best and gp-gpkernels
               only (the providers whose autograd graph the in-place form changes)

Method: before timing a critic, the step's loss and every parameter gradient of each penalty provider are
checked on its own critic copy (before that copy has taken a step) against gp-popular with the same alpha:
gp-best, gp-gpkernels, gp-func-eager and gp-func-compiled at weight 10, the lazy module's computed step at
weight 4 x 10, and fd against the same finite-difference formula in plain PyTorch
(gpkernels.reference.finite_difference_penalty) with the same pair of alphas. The data and the check's alphas
are on coarse binary grids so that every way of writing the interpolation gives the same points bit for bit (a
critic's ReLU kinks would otherwise turn rounding differences into gradient differences). Relative error
max|got - want| / max|want| at most 1e-4 per tensor, a missing .grad counting as zeros; the script aborts on a
mismatch, except for the compiled row: Inductor's fp32 kernels round the critic's pre-activations differently
from eager, so a few units land on the other side of a ReLU kink and single gradient entries can differ by
more (measured up to ~4e-3 on dcgan64). Where its fp32 check fails, the same function is compiled and checked
in float64 on a float64 copy; the row is timed (with a note giving both errors) if float64 agrees to 1e-4, and
dropped with the reason otherwise, or where it does not compile. Then each provider is warmed up, an inner
loop count is chosen so that a timed sample lasts at least --min-sample-ms, and --repeats samples are taken
round-robin over the providers (rotating the order each round) so that background load hits all of them alike.
Reported: median and interquartile range of the per-step time; "x plain step" = provider ms / plain ms (the
step's cost in plain critic steps measured in the same run); "x vs gp-best" = gp-best ms / provider ms (> 1 is
faster than gp-best).

FLOPs (deterministic, not timed): each autograd provider's step (forwards and backward; Adam's update has
none) is counted once with FlopCounterMode's formulas (matrix products and convolutions) and reported as a
multiple of the plain step's FLOPs. The FLOP floor of an exact GP step, over the plain step, is
(plain + 4F) / plain with F one critic forward on the batch: the forward at x_hat (F), the inner input
gradient (F) and the outer backward (2F: per layer one forward-like product for the incoming gradient and
one weight-gradient product). For a piecewise-linear critic nothing cheaper computes the exact penalty's
gradient; autograd alone does 2F more in the outer backward, on zeros (see gpkernels/_reroute.py).

Verdicts, per critic and thread count: gp-gpkernels against gp-best (and against gp-func-compiled where it
ran): "not slower" when the measured ratio is >= 1, "within noise" when it is below 1 but the two
interquartile ranges overlap, else "SLOWER"; gp-gpkernels' cost against the FLOP floor; and the GP/plain
step ratio of every penalty provider.

Usage (from the repository root):
    PYTHONPATH=. python benchmarks/bench_step.py --threads 1 2                     # full run, ~14 min on 2 cores
    PYTHONPATH=. python benchmarks/bench_step.py --quick --threads 1               # smoke run for `make bench`
    PYTHONPATH=. python benchmarks/bench_step.py --critics resnet32 --repeats 3 --out /tmp/x   # a quick look
    PYTHONPATH=. python benchmarks/bench_step.py --device cuda      # on a GPU: gpkernels backend cuda, CUDA events
"""

import argparse
import copy
import os
import sys
import tempfile
import time

import torch
from torch.func import functional_call, grad, grad_and_value

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # loaded other than as `python benchmarks/bench_step.py`: _common lives beside us
    sys.path.insert(0, HERE)
# _common also puts the repository on sys.path when gpkernels is not importable otherwise.
from _common import (Timer, command_line, environment_lines, first_line, loss_and_grads,  # noqa: E402
                     measure, output_dir, quartiles, VERDICT_LEGEND, timing_bars, verdict, worst_error,
                     write_csv, write_report)
from _critics import ConvCritic, ResNetCritic, mlp_critic  # noqa: E402

import gpkernels  # noqa: E402
from gpkernels import reference  # noqa: E402
from gpkernels.reference import per_sample_view  # noqa: E402
from gpkernels.trainer.plots import pyplot  # noqa: E402

WEIGHT = 10.0
LAZY = 4
RTOL = 1e-4
BACKEND = "cpu"
LR, BETAS = 1e-4, (0.5, 0.9)  # the WGAN-GP paper's Adam settings
PENALTIES = ("gp-popular", "gp-best", "gp-gpkernels", "gp-lazy4", "fd", "gp-func-eager", "gp-func-compiled")
PROVIDERS = ("plain",) + PENALTIES
MIN_FULL_REPEATS = 20

# The in-place forms (the activations as most public WGAN-GP code writes them) run the providers whose
# graphs they change: the autograd ones.
INPLACE_PROVIDERS = ("plain", "gp-popular", "gp-best", "gp-gpkernels")
# (name, constructor, per-sample input shape, batch size, in --quick, providers)
CRITICS = [
    ("mlp", mlp_critic, (2,), 256, True, PROVIDERS),
    ("mlp-inplace", lambda: mlp_critic(inplace=True), (2,), 256, True, INPLACE_PROVIDERS),
    ("dcgan32", lambda: ConvCritic(32), (3, 32, 32), 64, True, PROVIDERS),
    ("dcgan32-inplace", lambda: ConvCritic(32, inplace=True), (3, 32, 32), 64, True, INPLACE_PROVIDERS),
    ("resnet32", ResNetCritic, (3, 32, 32), 64, False, PROVIDERS),
    ("resnet32-inplace", lambda: ResNetCritic(inplace=True), (3, 32, 32), 64, False, INPLACE_PROVIDERS),
    ("dcgan64", lambda: ConvCritic(64), (3, 64, 64), 64, False, PROVIDERS),
    ("dcgan64-inplace", lambda: ConvCritic(64, inplace=True), (3, 64, 64), 64, False, INPLACE_PROVIDERS),
]
CRITIC_NAMES = [c[0] for c in CRITICS]


# ----------------------------------------------------------------------------------------------- penalties
# Each takes (critic, real, fake), an optional (B,) alpha (for the check; None draws a fresh one per call,
# part of the timed work) and the weight, and returns the penalty term to add to the critic loss.

def _draw_column(like):
    """A fresh (B, 1, ..., 1) alpha ~ U[0, 1) for `like` (B, *), drawn as the reference draws it."""
    return per_sample_view(reference.draw_alpha(like), like)


def popular_penalty(critic, real, fake, alpha=None, weight=WEIGHT):
    """The formula as the WGAN-GP paper and most code derived from it write it: the package's
    plain-autograd reference."""
    return reference.gradient_penalty(critic, real, fake, weight=weight, alpha=alpha)


# A copy of the penalty on purpose: what gp-best measures is this way of writing it (lerp, vector_norm).
def best_penalty(critic, real, fake, alpha=None, weight=WEIGHT):
    """The same penalty with the cheapest eager ops we know: one lerp kernel for the interpolation and
    vector_norm on a flattened view."""
    alpha = _draw_column(real) if alpha is None else per_sample_view(alpha, real)
    x = torch.lerp(fake, real, alpha).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return weight * ((torch.linalg.vector_norm(g.flatten(1), dim=1) - 1) ** 2).mean()


def gpkernels_penalty(critic, real, fake, alpha=None, weight=WEIGHT):
    return gpkernels.gradient_penalty(critic, real, fake, weight=weight, alpha=alpha, backend=BACKEND)


def fd_penalty(critic, real, fake, alpha=None, weight=WEIGHT):
    return gpkernels.finite_difference_penalty(critic, real, fake, weight=weight, alpha=alpha, backend=BACKEND)


# A copy of the penalty on purpose: gp-func-* measure it written with torch.func (grad inside grad_and_value
# over functional_call), which cannot go through the autograd.grad-based reference.
def func_step(critic, weight=WEIGHT):
    """torch.func's (grads, loss) of the whole critic loss, as a function of a {name: parameter} dict.
    alpha: a (B, 1, ..., 1) column; drawn by the caller so that the check can pass its own."""
    def score(params, x):
        return functional_call(critic, params, (x,))

    def loss(params, real, fake, alpha):
        x = torch.lerp(fake, real, alpha)
        g = grad(lambda y: score(params, y).sum())(x)
        penalty = weight * ((torch.linalg.vector_norm(g.flatten(1), dim=1) - 1) ** 2).mean()
        return score(params, fake).mean() - score(params, real).mean() + penalty

    return grad_and_value(loss)


# The providers whose step is one autograd step with this penalty term (None: the plain step).
AUTOGRAD_PENALTIES = {"plain": None, "gp-popular": popular_penalty, "gp-best": best_penalty,
                      "gp-gpkernels": gpkernels_penalty, "fd": fd_penalty}


# ----------------------------------------------------------------------------------------------- steps

class Provider:
    """One row: its own copy of the critic, its own optimizer, and the timed call."""

    def __init__(self, base):
        self.critic = copy.deepcopy(base)
        self.opt = torch.optim.Adam(self.critic.parameters(), lr=LR, betas=BETAS)
        self.params = dict(self.critic.named_parameters())


def autograd_step(prov, real, fake, penalty):
    """One critic step; `penalty(critic, real, fake)` -> the term to add, or None for the plain step."""
    critic, opt = prov.critic, prov.opt

    def step():
        opt.zero_grad(set_to_none=True)
        loss = critic(fake).mean() - critic(real).mean()
        if penalty is not None:
            loss = loss + penalty(critic, real, fake)
        loss.backward()
        opt.step()
    return step


def lazy_round(prov, real, fake):
    """LAZY critic steps; measure() sees one call, its time is divided by LAZY afterwards. Every round
    holds exactly one computed penalty, whatever the module's counter was when it started."""
    lazy = gpkernels.GradientPenalty(weight=WEIGHT, lazy=LAZY, backend=BACKEND)
    critic, opt = prov.critic, prov.opt

    def call():
        for _ in range(LAZY):
            opt.zero_grad(set_to_none=True)
            # A skipped call returns a zero with no graph: adding it leaves the plain step's graph.
            loss = critic(fake).mean() - critic(real).mean() + lazy(critic, real, fake)
            loss.backward()
            opt.step()
    return call


def func_timed_step(prov, real, fake, fn):
    params, opt = prov.params, prov.opt

    def step():
        grads, _ = fn(params, real, fake, _draw_column(real))
        # Assigning every .grad replaces the last step's, so no zero_grad is needed.
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()
    return step


# ----------------------------------------------------------------------------------------------- checking

def autograd_grads(prov, real, fake, penalty):
    """(loss, {name: grad}) of one step's loss with `penalty(critic)`, without stepping; None grads as zeros."""
    critic = prov.critic
    return loss_and_grads(critic, lambda: critic(fake).mean() - critic(real).mean() + penalty(critic))


def mismatch(got, want):
    """None if (loss, grads) `got` equals `want` to RTOL, else a sentence saying where it differs most."""
    what, err = worst_error(got, want)
    if err <= RTOL:  # also False for NaN
        return None
    return f"{what} differs by {err:.3g} relative (> {RTOL:g})"


def check_or_exit(where, name, got, want, against):
    why = mismatch(got, want)
    if why is not None:
        sys.exit(f"bench_step: CORRECTNESS FAILURE ({where}): {name}: {why} against {against}; not timing.")


def grid_data(B, shape, generator):
    """randn rounded to multiples of 1/64: any interpolation with alphas that are multiples of 1/16 is then
    exact in fp32, so every provider's penalty points are bit-identical (values do not change the work)."""
    return (torch.randn(B, *shape, generator=generator) * 64).round().clamp(-256, 256) / 64


def grid_alpha(B, low, high, generator):
    """(B,) alphas, multiples of 1/16 in [low/16, high/16]."""
    return torch.randint(low, high + 1, (B,), generator=generator).float() / 16


# ----------------------------------------------------------------------------------------------- compile

def compile_counters():
    """(graphs compiled, graph breaks) so far, from Dynamo's counters; (None, None) if they moved."""
    try:
        from torch._dynamo.utils import counters
        return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    except Exception:  # a private API: its absence must not stop the benchmark
        return None, None


def cold_compile_cache(directory):
    """Point Inductor at an empty on-disk cache and drop its in-memory ones, so that the compile time
    measured next is what a first run pays, not what earlier runs or configurations left behind."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory  # read by Inductor at each use
    try:
        from torch._inductor.utils import clear_caches
        clear_caches()
    except (ImportError, AttributeError):  # a private API: without it the cache is only partly cold
        pass


def float64_check(base, real, fake, alpha):
    """Compile the torch.func step for a float64 copy of `base` and compare it with gp-popular in float64:
    None if they agree to RTOL, else the mismatch. Tells a wrong compiled graph from fp32 rounding: Inductor
    computes the critic's pre-activations with other roundings than eager, and a pre-activation that lands
    on the other side of a ReLU kink changes that unit's gradient outright."""
    r, f, a = real.double(), fake.double(), alpha.double()
    prov = Provider(copy.deepcopy(base).double())
    want = autograd_grads(prov, r, f, lambda c: popular_penalty(c, r, f, a))
    grads, loss = torch.compile(func_step(prov.critic))(prov.params, r, f, per_sample_view(a, r))
    return mismatch((loss, grads), want), worst_error((loss, grads), want)


def prepare_compiled(prov, base, real, fake, alpha, want):
    """Compile the torch.func step for `prov`'s critic and check it. Returns (fn or None, info dict)."""
    info = {"compile_s": None, "graphs": None, "graph_breaks": None, "count": None, "note": ""}
    fn = torch.compile(func_step(prov.critic))
    try:
        g0, b0 = compile_counters()
        t0 = time.perf_counter()
        grads, loss = fn(prov.params, real, fake, per_sample_view(alpha, real))
        info["compile_s"] = time.perf_counter() - t0
        g1, b1 = compile_counters()
        if g0 is not None:
            info["graphs"], info["graph_breaks"] = g1 - g0, b1 - b0
        why = mismatch((loss, grads), want)
        if why is not None:
            # Dropped only if float64 disagrees too; see float64_check.
            try:
                why64, (what64, err64) = float64_check(base, real, fake, alpha)
            except Exception as exc:  # as below, but the fp32 function did compile
                info["note"] = f"dropped: fp32 {why} against gp-popular; the float64 check failed: {first_line(exc)}"
                return None, info
            if why64 is not None:
                info["note"] = f"dropped: fp32 {why}, float64 {why64}, against gp-popular"
                return None, info
            info["note"] = (f"fp32 {why} against gp-popular, but in float64 the same function agrees "
                            f"(worst {err64:.1g}, {what64}): fp32 rounding, timed")
        before = compile_counters()[0]
        fn(prov.params, real, fake, _draw_column(real))  # a call as timing makes it: must not recompile
        info["count"] = compile_counters()[0]
        if before is not None and info["count"] != before:
            info["note"] = (info["note"] + "; " if info["note"] else "") + "recompiled on the second call"
    except Exception as exc:  # whatever Dynamo/Inductor raise, the other rows are still worth having
        info["note"] = f"does not compile: {first_line(exc)}"
        return None, info
    return fn, info


# ----------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time one whole WGAN-GP critic step (forwards on real and fake, penalty, backward, Adam "
                    "step) with no penalty, the popular and the best eager penalty, gpkernels, lazy "
                    "gpkernels (every 4th step), the finite-difference penalty and torch.func (eager and "
                    "torch.compile).",
        epilog="See the module docstring for exactly what is timed.")
    p.add_argument("--threads", type=int, nargs="+", default=[1], metavar="T",
                   help="torch.set_num_threads values; rows for each (default: 1)")
    p.add_argument("--critics", nargs="+", choices=CRITIC_NAMES, default=None, metavar="NAME",
                   help=f"critics to run, of {', '.join(CRITIC_NAMES)} (default: all; mlp dcgan32 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed samples per provider and configuration (default: {MIN_FULL_REPEATS}; 10 with "
                        f"--quick)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="each timed sample repeats the step until it lasts at least this long (default: 20; "
                        "10 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per provider and configuration "
                                                         "(default: 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run for `make bench`: mlp and dcgan32, fewer repeats, and no torch.compile row "
                        "unless --compile is given; writes bench_step_quick.{csv,md,png}")
    p.add_argument("--compile", action="store_true",
                   help="with --quick: also run gp-func-compiled (its compilation takes tens of seconds "
                        "per critic and thread count, more than the rest of the quick run)")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="leave Inductor's caches as they are (compile times then depend on earlier runs); "
                        "by default every configuration compiles with an empty cache in a temporary directory")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu (gpkernels backend cpu) or cuda (backend cuda, CUDA-event timing); default cpu")
    p.add_argument("--out", default=None,
                   help="output directory (default: benchmarks/results/<machine>/, e.g. cpu-amd-epyc-1-2t)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG chart")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default: 0)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 10 if args.quick else MIN_FULL_REPEATS
    if args.min_sample_ms is None:
        args.min_sample_ms = 10.0 if args.quick else 20.0
    if args.critics is None:
        args.critics = [c[0] for c in CRITICS if c[4] or not args.quick]
    args.run_compiled = args.compile or not args.quick
    if min(args.threads) < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    if not args.quick and args.repeats < MIN_FULL_REPEATS:
        print(f"bench_step: --repeats {args.repeats} is below the {MIN_FULL_REPEATS} a full run takes; "
              "treat the result as a smoke run", file=sys.stderr)
    return args


def step_flops(prov, real, fake, penalty):
    """FLOPs of one step's forwards and backward (the optimizer's elementwise update has none)."""
    critic = prov.critic
    with gpkernels.FlopCount() as count:
        loss = critic(fake).mean() - critic(real).mean()
        if penalty is not None:
            loss = loss + penalty(critic, real, fake)
        loss.backward()
    critic.zero_grad(set_to_none=True)
    return count.total


def flop_floor(critic, real, plain_flops):
    """The FLOPs of an exact GP step over a plain step's, with F = one critic forward on the batch: plain +
    the forward at x_hat (F) + the inner input gradient (F: one input-gradient product per layer) + the outer
    backward (2F: per layer one forward-like product for the incoming gradient, one weight gradient)."""
    with gpkernels.FlopCount() as forward:
        critic(real)
    return (plain_flops + 4 * forward.total) / plain_flops


def run_config(name, make, shape, B, threads, args, timer, providers=PROVIDERS):
    """(rows, compile info or None, FLOP floor as a multiple of the plain step) for one critic at one
    thread count."""
    where = f"{name} B={B} threads={threads}"
    # Inductor's CPU kernels are generated for the thread count at compile time and Dynamo does not guard
    # on it, so every configuration compiles afresh (its cache key does include the thread count).
    torch._dynamo.reset()
    try:
        from torch._dynamo.utils import counters
        counters.clear()
    except ImportError:
        pass
    run_compiled = args.run_compiled and "gp-func-compiled" in providers
    if run_compiled and args.cache_root is not None:
        cold_compile_cache(os.path.join(args.cache_root, f"{name}-{threads}t"))
    device = torch.device(args.device)
    base = make().to(device)
    gen = torch.Generator().manual_seed(args.seed + 1)  # drawn on the CPU: the same data on every device
    real, fake = grid_data(B, shape, gen).to(device), grid_data(B, shape, gen).to(device)
    rows_run = [p for p in providers if p != "gp-func-compiled" or run_compiled]
    prov = {p: Provider(base) for p in rows_run}

    # ---- correctness, on each provider's own copy before it has taken a step
    alpha = grid_alpha(B, 0, 16, gen).to(device)
    want = autograd_grads(prov["gp-popular"], real, fake, lambda c: popular_penalty(c, real, fake, alpha))
    against = "gp-popular (same alpha)"
    checked = {"gp-best": lambda c: best_penalty(c, real, fake, alpha),
               "gp-gpkernels": lambda c: gpkernels_penalty(c, real, fake, alpha)}
    for p, penalty in checked.items():
        check_or_exit(where, p, autograd_grads(prov[p], real, fake, penalty), want, against)
    if "gp-func-eager" in prov:
        grads, loss = func_step(prov["gp-func-eager"].critic)(prov["gp-func-eager"].params, real, fake,
                                                              per_sample_view(alpha, real))
        check_or_exit(where, "gp-func-eager", (loss, grads), want, against)
    if "gp-lazy4" in prov:
        lazy = gpkernels.GradientPenalty(weight=WEIGHT, lazy=LAZY, backend=BACKEND)
        check_or_exit(where, "gp-lazy4 (computed step)",
                      autograd_grads(prov["gp-lazy4"], real, fake, lambda c: lazy(c, real, fake, alpha=alpha)),
                      autograd_grads(prov["gp-popular"], real, fake,
                                     lambda c: popular_penalty(c, real, fake, alpha, weight=LAZY * WEIGHT)),
                      f"gp-popular at weight {LAZY} x {WEIGHT:g}")
    if "fd" in prov:
        # Alphas at least 2/16 apart, so that fd's min_gap guard keeps every pair, as the reference does.
        pair = (grid_alpha(B, 0, 7, gen).to(device), grid_alpha(B, 9, 16, gen).to(device))
        check_or_exit(where, "fd", autograd_grads(prov["fd"], real, fake,
                                                  lambda c: fd_penalty(c, real, fake, pair)),
                      autograd_grads(prov["fd"], real, fake,
                                     lambda c: reference.finite_difference_penalty(c, real, fake, weight=WEIGHT,
                                                                                   alpha=pair)),
                      "the finite-difference formula in plain PyTorch (same alphas)")

    compiled, info = None, None
    if run_compiled:
        print(f"  {where}: compiling the torch.func step ...", file=sys.stderr, flush=True)
        compiled, info = prepare_compiled(prov["gp-func-compiled"], base, real, fake, alpha, want)
        if compiled is None:
            print(f"  {where}: gp-func-compiled {info['note']}", file=sys.stderr, flush=True)
            del prov["gp-func-compiled"]

    # ---- FLOPs, counted (deterministic) on the providers' own copies; taking no optimizer step
    # (the autograd providers; torch.func's transforms and the lazy round are not counted)
    flops = {p: step_flops(prov[p], real, fake, AUTOGRAD_PENALTIES[p]) for p in AUTOGRAD_PENALTIES if p in prov}
    floor = flop_floor(base, real, flops["plain"])

    # ---- timing
    makers = {
        **{name: (lambda p, penalty=penalty: autograd_step(p, real, fake, penalty))
           for name, penalty in AUTOGRAD_PENALTIES.items()},
        "gp-lazy4": lambda p: lazy_round(p, real, fake),
        "gp-func-eager": lambda p: func_timed_step(p, real, fake, func_step(p.critic)),
        "gp-func-compiled": lambda p: func_timed_step(p, real, fake, compiled),
    }
    calls = {p: makers[p](prov[p]) for p in PROVIDERS if p in prov}
    samples = measure(calls, timer, args.repeats, args.min_sample_ms / 1e3, args.warmup)
    if "gp-lazy4" in samples:
        samples["gp-lazy4"] = [s / LAZY for s in samples["gp-lazy4"]]
    if compiled is not None:
        if info["count"] is not None and compile_counters()[0] != info["count"]:
            info["note"] = (info["note"] + "; " if info["note"] else "") + "recompiled while being timed"

    stats = {p: quartiles(samples[p]) for p in PROVIDERS if p in samples}
    plain_ms, best_ms = stats["plain"][1] * 1e3, stats["gp-best"][1] * 1e3
    rows = []
    for p in PROVIDERS:
        if p not in stats:
            continue
        q1, med, q3 = (v * 1e3 for v in stats[p])
        rows.append({
            "critic": name, "B": B, "input_shape": "x".join(map(str, shape)), "threads": threads,
            "provider": p, "median_ms": med, "iqr_ms": q3 - q1, "q1_ms": q1, "q3_ms": q3,
            "x_plain_step": med / plain_ms, "x_vs_gp_best": best_ms / med,
            "flops_x_plain": flops[p] / flops["plain"] if p in flops else "",
            "flop_floor_x_plain": floor, "repeats": args.repeats,
            "compile_s": info["compile_s"] if p == "gp-func-compiled" else "",
        })
    return rows, info, floor


def floor_line(rows, floor):
    """gp-gpkernels' measured cost against the exact GP step's FLOP floor."""
    got = next(r for r in rows if r["provider"] == "gp-gpkernels")
    return (f"FLOP floor of an exact GP step {floor:.2f}x plain; gp-gpkernels {got['x_plain_step']:.2f}x in "
            f"time ({got['x_plain_step'] / floor:.2f}x the floor), {got['flops_x_plain']:.2f}x in FLOPs")


def ratio_line(rows):
    return "GP/plain step: " + ", ".join(f"{r['provider']} {r['x_plain_step']:.2f}x" for r in rows
                                         if r["provider"] != "plain")


def compile_line(label, info):
    if info is None:
        return f"{label}: not run (--quick without --compile)"
    if info["compile_s"] is None:
        return f"{label}: {info['note']}"
    text = f"{label}: first call (compilation and one step) {info['compile_s']:.1f} s"
    if info["graphs"] is not None:
        text += f"; {info['graphs']} graph(s), {info['graph_breaks']} graph break(s)"
    return text + (f"; {info['note']}" if info["note"] else "")


def markdown_table(rows):
    head = ["critic", "B", "input", "threads", "provider", "median ms", "IQR ms", "x plain step", "x vs gp-best",
            "FLOPs x plain"]
    text = ("critic", "input", "provider")  # left-aligned; numbers right-aligned
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(":---" if h in text else "---:" for h in head) + "|"]
    for r in rows:
        cells = [r["critic"], str(r["B"]), r["input_shape"], str(r["threads"]), r["provider"],
                 f"{r['median_ms']:.4g}", f"{r['iqr_ms']:.2g}", f"{r['x_plain_step']:.2f}",
                 f"{r['x_vs_gp_best']:.2f}", f"{r['flops_x_plain']:.2f}" if r["flops_x_plain"] != "" else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    """Bar charts of median ms per step (IQR as error bars, labels: x plain step), one panel per critic
    (columns) and thread count (rows). Returns False when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False

    critics = list(dict.fromkeys(r["critic"] for r in rows))
    threads = list(dict.fromkeys(r["threads"] for r in rows))
    fig, axes = plt.subplots(len(critics), len(threads), figsize=(5.2 * len(threads), 3.6 * len(critics)),
                             squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for i, c in enumerate(critics):
        for j, t in enumerate(threads):
            ax = axes[i][j]
            rs = [r for r in rows if r["critic"] == c and r["threads"] == t]
            if not rs:
                ax.set_visible(False)
                continue
            # One colour per provider across panels, so that a bar is recognisable in every panel.
            timing_bars(ax, rs, "x_plain_step", [colours[PROVIDERS.index(r["provider"])] for r in rs],
                        "median ms per critic step (IQR bars)",
                        f"{c}, B={rs[0]['B']}, input {rs[0]['input_shape']}, {t} thread(s)")
            plain = next(r for r in rs if r["provider"] == "plain")
            floor = plain["median_ms"] * float(plain["flop_floor_x_plain"])
            ax.axhline(floor, color="black", linestyle=":", linewidth=1)
            ax.text(-0.45, floor, "exact-GP FLOP floor", ha="left", va="bottom", fontsize=7)
    fig.suptitle("One WGAN critic step incl. Adam (labels: cost in plain steps of the same run; dotted: the "
                 "exact GP step's FLOP floor)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    args = parse_args(argv)
    global BACKEND
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_step: --device cuda, but torch sees no CUDA device here")
    device = torch.device(args.device)
    BACKEND = "cuda" if device.type == "cuda" else "cpu"
    timer = Timer(device)
    configs = [c for c in CRITICS if c[0] in args.critics]
    threads_text = " ".join(map(str, args.threads))

    cache_tmp = None
    args.cache_root = None
    if args.run_compiled and not args.warm_compile_cache:
        # Inductor's compile workers may still hold files in it at exit: do not fail over the cleanup.
        cache_tmp = tempfile.TemporaryDirectory(prefix="bench_step_inductor_", ignore_cleanup_errors=True)
        args.cache_root = cache_tmp.name

    t_start = time.perf_counter()
    rows, verdicts, compile_notes = [], [], []
    total = len(configs) * len(args.threads)
    i = 0
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, make, shape, B, _, providers in configs:
            i += 1
            torch.manual_seed(args.seed)  # the same critic weights for every thread count
            label = f"{name} B={B} threads={threads}"
            t0 = time.perf_counter()
            new, info, floor = run_config(name, make, shape, B, threads, args, timer, providers)
            rows += new
            verdicts += [f"{label}: {verdict(new, 'gp-gpkernels', 'gp-best')}", f"{label}: {floor_line(new, floor)}"]
            if any(r["provider"] == "gp-func-compiled" for r in new):
                verdicts.append(f"{label}: {verdict(new, 'gp-gpkernels', 'gp-func-compiled')}")
            verdicts.append(f"{label}: {ratio_line(new)}")
            if "gp-func-compiled" in providers:
                compile_notes.append(compile_line(label, info))
            speed = ", ".join(f"{r['provider']} {r['median_ms']:.3g} ms" for r in new)
            print(f"[{i}/{total}] {label}: {speed} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr,
                  flush=True)
    wall_s = time.perf_counter() - t_start

    print(markdown_table(rows))
    print()
    for v in verdicts:
        print(v)
    print()
    print("torch.func + torch.compile:")
    for c in compile_notes:
        print(c)
    print(f"wall time {wall_s:.0f} s")

    out = output_dir(args.out, device, args.threads)
    stem = "bench_step_quick" if args.quick else "bench_step"
    write_csv(os.path.join(out, stem + ".csv"), rows)
    command = command_line("bench_step", argv)
    md = [
        "# Critic step benchmark (bench_step.py)",
        "",
        "Timed work per step: `opt.zero_grad(set_to_none=True)`, `loss = D(fake).mean() - D(real).mean()` "
        "(+ penalty), `loss.backward()`, `opt.step()` with Adam(lr 1e-4, betas (0.5, 0.9)); fixed real and "
        "fake tensors; each provider on its own copy of the critic and its own optimizer; fp32, CPU.",
        "plain: no penalty; gp-popular: `gpkernels.reference.gradient_penalty` (`alpha*real + (1-alpha)*fake`, "
        "`autograd.grad(D(x).sum(), x, create_graph=True)`, `g.reshape(B, -1).norm(2, dim=1)`); "
        "gp-best: `torch.lerp`, `autograd.grad(D(x).sum(), x, create_graph=True)`, "
        "`torch.linalg.vector_norm(g.flatten(1), dim=1)`; gp-gpkernels: `gpkernels.gradient_penalty(D, real, "
        f"fake, backend=\"cpu\")`; gp-lazy4: `GradientPenalty(lazy={LAZY})`, {LAZY} steps (one with the "
        f"penalty) per timed call, time / {LAZY}; fd: `gpkernels.finite_difference_penalty`; gp-func-eager: "
        "the whole loss with `torch.func` (inner `grad` w.r.t. x_hat, outer `grad_and_value` w.r.t. the "
        "parameters through `functional_call`), grads assigned to `.grad`, then `opt.step()`; "
        "gp-func-compiled: the same function under `torch.compile` (Inductor).",
        "x plain step: provider ms / plain ms (the step's cost in plain critic steps, same run); "
        "x vs gp-best: gp-best ms / provider ms (> 1 = faster than gp-best); FLOPs x plain: the step's "
        "FLOPs (matrix products and convolutions, counted) over the plain step's. FLOP floor of an exact GP "
        "step: plain + 4 critic forwards (x_hat forward, inner input gradient, outer backward 2).",
        "*-inplace critics: the same critic with in-place activations, as most public code writes them.",
        "",
        *environment_lines(device, threads=threads_text),
        f"- command: `{command}`",
        f"- fp32; {args.repeats} samples per provider and configuration, each >= {args.min_sample_ms:g} ms "
        f"(inner loop), {args.warmup} warm-up calls, taken round-robin; median per-step ms and interquartile "
        f"range",
        f"- correctness checked before timing, on each provider's own critic copy: step loss and every "
        f"parameter gradient of gp-best, gp-gpkernels, gp-func-eager, gp-func-compiled (and gp-lazy4's "
        f"computed step at weight {LAZY} x {WEIGHT:g}) against gp-popular, fd against the finite-difference "
        f"formula in plain PyTorch, same alphas, within {RTOL:g} relative; gp-func-compiled, where its fp32 "
        f"check fails, is timed only if the same function compiled in float64 passes (see its note below)",
        f"- run wall time: {wall_s:.0f} s",
        "",
        markdown_table(rows),
        "",
        VERDICT_LEGEND,
        "",
        *[f"- {v}" for v in verdicts],
        "",
        "torch.func + torch.compile (compile time: wall time of the first call, which also runs one step; "
        + ("Inductor's caches left as found, so earlier runs may have warmed them):" if args.warm_compile_cache
           else "every configuration compiled with empty Inductor caches, as on a first run; the first "
                "compilation of the run also pays Inductor's one-off start-up in the process):"),
        "",
        *[f"- {c}" for c in compile_notes],
        "",
    ]
    write_report(out, stem, md, rows, plot, args.no_plot, "bench_step")
    if cache_tmp is not None:
        cache_tmp.cleanup()


if __name__ == "__main__":
    main()
