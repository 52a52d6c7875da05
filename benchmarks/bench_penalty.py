"""Benchmark of the whole WGAN-GP penalty call, critic included: the penalty and its backward into the
critic's parameters, as one training step of the critic pays for it.

What is timed, per critic and batch size, fp32, for every provider, is one call of

    critic.zero_grad(set_to_none=True)        every call then allocates and fills the same .grad tensors
    loss = <penalty>(critic, real, fake)      fresh random points each call
    loss.backward()                           into the critic's parameters

Providers:
    plain             the penalty as written from the paper in plain autograd,
                      gpkernels.reference.gradient_penalty(D, real, fake): alpha = torch.rand(B);
                      x = alpha * real + (1 - alpha) * fake (alpha viewed as (B, 1, ..., 1));
                      x.requires_grad_(True); g = autograd.grad(D(x).sum(), x, create_graph=True)[0];
                      gp = 10 * ((g.reshape(B, -1).norm(2, dim=1) - 1) ** 2).mean()
    gpkernels         gpkernels.gradient_penalty(D, real, fake, backend="cpu")
    gpkernels-exact   the same with fast_relu=False: autograd's own graph for the whole critic, whose
                      materialised-zero second derivatives (ReLU, LeakyReLU) make the outer backward run
                      through the whole forward graph of D(x_hat), and whose convolutions compute the
                      double backward's weight gradient as a slower convolution over the batch (see
                      gpkernels/_reroute.py); what the fused kernels alone give
    gpkernels-lazy4   gpkernels.GradientPenalty(lazy=4, backend="cpu") called 4 times per timed call, the
                      time divided by 4: the amortised cost per training step. One call in 4 computes the
                      penalty (weight 4 * 10) and is back-propagated; the other three return a zero without
                      running the critic and have nothing to back-propagate.
    fd                gpkernels.finite_difference_penalty(D, real, fake, backend="cpu"): two critic forwards
                      on two points of each real-fake line, no double backward
    plain-fd          the same finite-difference penalty in plain PyTorch,
                      gpkernels.reference.finite_difference_penalty(D, real, fake): two interpolations, two
                      forwards, slope = |D(x1) - D(x2)| / ||x1 - x2||, gp = 10 * mean((slope - 1) ** 2), a pair
                      closer than 1e-3 ||real - fake|| left out (as gpkernels' fd does)
    forward-backward  the unit of cost: one ordinary critic pass on B points, D(x).mean().backward()

Critics (no BatchNorm, as WGAN-GP's critic has none):
    mlp       Linear(2,512)-ReLU-Linear(512,512)-ReLU-Linear(512,512)-ReLU-Linear(512,1): the paper's toy
              critic; B = 256 (the paper's toy batch) and 1024 (not with --quick)
    dcgan32   Conv(3,64,4,2,1)-LReLU(0.2)-Conv(64,128,4,2,1)-LReLU-Conv(128,256,4,2,1)-LReLU-Conv(256,1,4,1,0)
              on 3x32x32, B = 64
    dcgan64   the same with one more stride-2 stage to 512 channels, on 3x64x64, B = 64 (not with --quick)
    mlp-inplace, dcgan32-inplace  the same critics with in-place activations (nn.ReLU(True),
              nn.LeakyReLU(0.2, True)), as most public WGAN-GP code writes them (not with --quick)

Method: before timing a critic, the gpkernels penalty and every parameter gradient are checked against
plain with the same alpha (and the lazy module's computed call against 4x plain, fd against plain-fd with
the same pair of alphas): relative error max|got - want| / max|want| at most 1e-4 per tensor, a missing
.grad counting as zeros; the script aborts on a mismatch. Then each provider is warmed up, an inner loop
count is chosen so that a timed sample lasts at least --min-sample-ms, and --repeats samples are taken
round-robin over the providers (rotating the order each round) so that background load hits all of them
alike. Reported: median and interquartile range of the per-call time; "x plain" = plain ms / provider ms
(> 1 is faster than plain); "x fwd-bwd" = provider ms / forward-backward ms.

Verdicts, per critic, batch and thread count: gpkernels against plain and fd against plain-fd; "not
slower" when the measured ratio is >= 1, "within noise" when it is below 1 but the two interquartile ranges
overlap, else "SLOWER".

Usage (from the repository root):
    PYTHONPATH=. python benchmarks/bench_penalty.py --threads 1
    PYTHONPATH=. python benchmarks/bench_penalty.py --threads 1 2
    PYTHONPATH=. python benchmarks/bench_penalty.py --quick          # smoke run for `make bench`
"""

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # loaded other than as `python benchmarks/bench_penalty.py`: _common lives beside us
    sys.path.insert(0, HERE)
# _common also puts the repository on sys.path when gpkernels is not importable otherwise.
from _common import (Timer, command_line, environment_lines, loss_and_grads, measure,  # noqa: E402
                     output_dir, quartiles, VERDICT_LEGEND, timing_bars, verdict, worst_error, write_csv,
                     write_report)
from _critics import ConvCritic, mlp_critic  # noqa: E402

import gpkernels  # noqa: E402
from gpkernels import reference  # noqa: E402
from gpkernels.trainer.plots import pyplot  # noqa: E402

WEIGHT = 10.0
LAZY = 4
RTOL = 1e-4
BACKEND = "cpu"
PROVIDERS = ("plain", "gpkernels", "gpkernels-exact", "gpkernels-lazy4", "fd", "plain-fd", "forward-backward")


# ----------------------------------------------------------------------------------------------- critics
# mlp_critic and ConvCritic live in _critics.py, shared with bench_step.py.

# (name, constructor, per-sample input shape, batch sizes in full mode, batch sizes with --quick)
CRITICS = [
    ("mlp", mlp_critic, (2,), (256, 1024), (256,)),
    ("mlp-inplace", lambda: mlp_critic(inplace=True), (2,), (256,), ()),
    ("dcgan32", lambda: ConvCritic(32), (3, 32, 32), (64,), (64,)),
    ("dcgan32-inplace", lambda: ConvCritic(32, inplace=True), (3, 32, 32), (64,), ()),
    ("dcgan64", lambda: ConvCritic(64), (3, 64, 64), (64,), ()),
]


# ----------------------------------------------------------------------------------------------- providers
# Each penalty takes (critic, real, fake) and an optional alpha (for the check; None draws a fresh one per
# call, part of the timed work) and returns the loss.

def plain_penalty(critic, real, fake, alpha=None):
    """The WGAN-GP penalty as a user writes it from the paper: the package's plain-autograd reference."""
    return reference.gradient_penalty(critic, real, fake, weight=WEIGHT, alpha=alpha)


def gpkernels_penalty(critic, real, fake, alpha=None):
    return gpkernels.gradient_penalty(critic, real, fake, weight=WEIGHT, alpha=alpha, backend=BACKEND)


def gpkernels_exact_penalty(critic, real, fake, alpha=None):
    return gpkernels.gradient_penalty(critic, real, fake, weight=WEIGHT, alpha=alpha, backend=BACKEND,
                                      fast_relu=False)


def fd_penalty(critic, real, fake, alpha=None):
    return gpkernels.finite_difference_penalty(critic, real, fake, weight=WEIGHT, alpha=alpha, backend=BACKEND)


def plain_fd_penalty(critic, real, fake, alpha=None):
    """The finite-difference penalty in plain PyTorch: the package's reference (alpha: None or a pair)."""
    return reference.finite_difference_penalty(critic, real, fake, weight=WEIGHT, alpha=alpha)


def timed_calls(critic, real, fake):
    """{provider: a no-argument function doing one timed call}; see the module docstring."""
    def step(penalty):
        def call():
            critic.zero_grad(set_to_none=True)
            penalty(critic, real, fake).backward()
        return call

    lazy = gpkernels.GradientPenalty(weight=WEIGHT, lazy=LAZY, backend=BACKEND)

    def lazy_round():
        # LAZY training steps; measure() sees one call, its time is divided by LAZY afterwards. Every
        # round holds exactly one computed call, whatever the module's counter was when it started.
        for _ in range(LAZY):
            critic.zero_grad(set_to_none=True)
            loss = lazy(critic, real, fake)
            if loss.requires_grad:  # the skipped calls' zero has no graph to back-propagate
                loss.backward()

    def forward_backward():
        critic.zero_grad(set_to_none=True)
        critic(real).mean().backward()

    return {
        "plain": step(plain_penalty),
        "gpkernels": step(gpkernels_penalty),
        "gpkernels-exact": step(gpkernels_exact_penalty),
        "gpkernels-lazy4": lazy_round,
        "fd": step(fd_penalty),
        "plain-fd": step(plain_fd_penalty),
        "forward-backward": forward_backward,
    }


# ----------------------------------------------------------------------------------------------- checking

def compare(where, name, baseline, got, want, scale=1.0):
    """Abort unless the (loss, grads) pair `got` equals `scale` times `want` to RTOL (loss_and_grads' pairs;
    the error is maxabs_rel_err, the worst tensor is named)."""
    what, err = worst_error(got, want, scale)
    if not (err <= RTOL):
        what = "penalty" if what == "loss" else what
        sys.exit(f"bench_penalty: CORRECTNESS FAILURE ({where}): {name} {what} differs from "
                 f"{'' if scale == 1 else f'{scale:g} x '}{baseline} by {err:.3g} relative "
                 f"(> {RTOL:g}); not timing.")


def check(where, critic, real, fake):
    B = real.shape[0]
    alpha = torch.rand(B)
    want = loss_and_grads(critic, lambda: plain_penalty(critic, real, fake, alpha))
    compare(where, "gpkernels", "plain", loss_and_grads(critic, lambda: gpkernels_penalty(critic, real, fake, alpha)),
            want)
    compare(where, "gpkernels-exact", "plain",
            loss_and_grads(critic, lambda: gpkernels_exact_penalty(critic, real, fake, alpha)), want)
    lazy = gpkernels.GradientPenalty(weight=WEIGHT, lazy=LAZY, backend=BACKEND)
    compare(where, "gpkernels-lazy4 (computed call)", "plain",
            loss_and_grads(critic, lambda: lazy(critic, real, fake, alpha=alpha)), want, scale=LAZY)
    # Alphas a gap >= 0.1 apart, so that the min_gap guard (gpkernels' and the reference's) keeps every pair.
    pair = (0.45 * torch.rand(B), 0.55 + 0.45 * torch.rand(B))
    want = loss_and_grads(critic, lambda: plain_fd_penalty(critic, real, fake, pair))
    compare(where, "fd", "plain-fd", loss_and_grads(critic, lambda: fd_penalty(critic, real, fake, pair)), want)


# ----------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time the WGAN-GP penalty including the backward into the critic's parameters: plain "
                    "autograd, gpkernels.gradient_penalty, its lazy (every 4th step) module, the finite-"
                    "difference penalty (gpkernels and plain), and one plain critic forward+backward.",
        epilog="See the module docstring for exactly what is timed.")
    p.add_argument("--threads", type=int, nargs="+", default=[1], metavar="T",
                   help="torch.set_num_threads values; rows for each (default: 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples per provider and configuration (default: 30; 20 with --quick)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="each timed sample repeats the call until it lasts at least this long (default: 20; "
                        "10 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per provider and configuration "
                                                         "(default: 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: fewer repeats, no 64x64 critic and no MLP batch 1024; writes "
                        "bench_penalty_quick.{csv,md,png}")
    p.add_argument("--out", default=None,
                   help="output directory (default: benchmarks/results/<machine>/, e.g. cpu-amd-epyc-1t)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG chart")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default: 0)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 20 if args.quick else 30
    if args.min_sample_ms is None:
        args.min_sample_ms = 10.0 if args.quick else 20.0
    if min(args.threads) < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    return args


def configurations(quick):
    for name, make, shape, full_batches, quick_batches in CRITICS:
        for B in (quick_batches if quick else full_batches):
            yield name, make, shape, B


def run_config(name, make, shape, B, threads, args, timer):
    where = f"{name} B={B} threads={threads}"
    critic = make()
    # Values do not change the work (ReLU/LeakyReLU cost the same either side of 0); randn stands in
    # for real data and generator output.
    real = torch.randn(B, *shape)
    fake = torch.randn(B, *shape)
    check(where, critic, real, fake)
    samples = measure(timed_calls(critic, real, fake), timer, args.repeats, args.min_sample_ms / 1e3,
                      args.warmup)
    samples["gpkernels-lazy4"] = [s / LAZY for s in samples["gpkernels-lazy4"]]
    stats = {p: quartiles(samples[p]) for p in PROVIDERS}
    plain_ms, fb_ms = stats["plain"][1] * 1e3, stats["forward-backward"][1] * 1e3
    rows = []
    for p in PROVIDERS:
        q1, med, q3 = (v * 1e3 for v in stats[p])
        rows.append({
            "critic": name, "B": B, "input_shape": "x".join(map(str, shape)), "threads": threads,
            "provider": p, "median_ms": med, "iqr_ms": q3 - q1, "q1_ms": q1, "q3_ms": q3,
            "x_plain": plain_ms / med, "x_fwd_bwd": med / fb_ms, "repeats": args.repeats,
        })
    return rows


def markdown_table(rows, with_iqr):
    head = ["critic", "B", "input", "threads", "provider", "median ms"] + (["IQR ms"] if with_iqr else []) + [
        "x plain", "x fwd-bwd"]
    text = ("critic", "input", "provider")  # left-aligned; numbers right-aligned
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(":---" if h in text else "---:" for h in head) + "|"]
    for r in rows:
        cells = [r["critic"], str(r["B"]), r["input_shape"], str(r["threads"]), r["provider"],
                 f"{r['median_ms']:.4g}"] + ([f"{r['iqr_ms']:.2g}"] if with_iqr else []) + [
                 f"{r['x_plain']:.2f}", f"{r['x_fwd_bwd']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    """A bar chart of median ms per provider (IQR as error bars), one panel per configuration. Returns
    False when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False

    groups = []
    for r in rows:
        key = (r["critic"], r["B"], r["threads"])
        if not groups or groups[-1][0] != key:
            groups.append((key, []))
        groups[-1][1].append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 4.2), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, ((critic, B, threads), rs) in zip(axes[0], groups):
        timing_bars(ax, rs, "x_plain", [colours[i % len(colours)] for i in range(len(rs))],
                    "median ms per call (IQR bars)",
                    f"{critic}, B={B}, input {rs[0]['input_shape']}, {threads} thread(s)")
    fig.suptitle("WGAN-GP penalty incl. backward into the critic (labels: x plain, > 1 faster)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cpu")
    timer = Timer(device)
    configs = list(configurations(args.quick))
    threads_text = " ".join(map(str, args.threads))

    t_start = time.perf_counter()
    rows, verdicts = [], []
    total = len(configs) * len(args.threads)
    i = 0
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, make, shape, B in configs:
            i += 1
            torch.manual_seed(args.seed)  # the same critic weights and data for every thread count
            t0 = time.perf_counter()
            new = run_config(name, make, shape, B, threads, args, timer)
            rows += new
            label = f"{name} B={B} threads={threads}"
            verdicts += [f"{label}: {verdict(new, 'gpkernels', 'plain')}",
                         f"{label}: {verdict(new, 'fd', 'plain-fd')}"]
            speed = ", ".join(f"{r['provider']} {r['median_ms']:.3g} ms" for r in new)
            print(f"[{i}/{total}] {label}: {speed} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr,
                  flush=True)
    wall_s = time.perf_counter() - t_start

    print(markdown_table(rows, with_iqr=True))
    print()
    for v in verdicts:
        print(v)
    print(f"wall time {wall_s:.0f} s")

    out = output_dir(args.out, device, args.threads)
    stem = "bench_penalty_quick" if args.quick else "bench_penalty"
    write_csv(os.path.join(out, stem + ".csv"), rows)
    command = command_line("bench_penalty", argv)
    md = [
        "# Penalty benchmark, critic included (bench_penalty.py)",
        "",
        "Timed work per call: `critic.zero_grad(set_to_none=True)`, the penalty on fresh random points, and "
        "`loss.backward()` into the critic's parameters; fp32, CPU.",
        "plain: the paper's formula in plain autograd, `gpkernels.reference.gradient_penalty` "
        "(`alpha*real + (1-alpha)*fake`, `autograd.grad(D(x).sum(), x, create_graph=True)`, "
        "`10 * ((g.reshape(B, -1).norm(2, dim=1) - 1) ** 2).mean()`); gpkernels: "
        "`gpkernels.gradient_penalty(D, real, fake, backend=\"cpu\")`; "
        f"gpkernels-lazy4: `GradientPenalty(lazy={LAZY})`, {LAZY} calls (one computed and back-propagated) "
        f"per timed call, time / {LAZY}; fd: `gpkernels.finite_difference_penalty`; plain-fd: the same "
        "finite-difference formula in plain PyTorch (`gpkernels.reference.finite_difference_penalty`); "
        "forward-backward: `D(x).mean().backward()` on B points.",
        "x plain: plain ms / provider ms (> 1 = faster than plain); x fwd-bwd: provider ms / forward-backward "
        "ms (the penalty's cost in plain critic passes).",
        "",
        *environment_lines(device, threads=threads_text),
        f"- command: `{command}`",
        f"- fp32; {args.repeats} samples per provider and configuration, each >= {args.min_sample_ms:g} ms "
        f"(inner loop), {args.warmup} warm-up calls, taken round-robin; median per-call ms and interquartile "
        f"range",
        f"- correctness checked before timing: gpkernels (and the lazy module's computed call, / {LAZY}) vs "
        f"plain, fd vs plain-fd, same alphas, penalty and every parameter gradient within {RTOL:g} relative",
        f"- run wall time: {wall_s:.0f} s",
        "",
        markdown_table(rows, with_iqr=True),
        "",
        VERDICT_LEGEND,
        "",
        *[f"- {v}" for v in verdicts],
        "",
    ]
    write_report(out, stem, md, rows, plot, args.no_plot, "bench_penalty")


if __name__ == "__main__":
    main()
