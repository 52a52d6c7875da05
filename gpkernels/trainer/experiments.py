"""`python -m gpkernels experiments NAME --out DIR [--quick]`: the WGAN-GP paper's findings, re-run with the
reference trainer, as PNG figures and DIR/report.md (figures embedded, numbers in tables, DIR/summary.json).

    weights      critic weight histograms after training, clip vs GP (clipping piles weights up at +-c)
    grad-norms   gradient norm reaching each layer of a 12-layer critic, clip c in {0.1, 0.01, 0.001} vs GP
    toy          critic contours with real and generated samples, per toy set and regulariser, and final W1
    convergence  W1 against training seconds for clip, GP, lazy GP and the finite-difference penalty
    digits       Frechet distance over training and sample grids on 8x8 digits, clip vs GP vs FD
    text         n-gram JS divergence over training, and sample strings
    all          every one of them above, in one report
    frontier     the cost-quality frontier of clip, GP, LP, lazy and subsampled GP and FD, 3 seeds each, at equal
                 wall-clock (not part of `all`: the longest; with --jobs 2 --threads 1 on two CPU cores
                 --quick takes about 7 minutes, the full one about 70)

--quick shrinks the nets and the budgets so that each finishes in a few minutes on two CPU cores; without
it the nets are the paper's size (512-wide toy MLPs) and the runs longer. Every run is one seed. Subnormal
floats are flushed to zero (torch.set_flush_denormal), as in the trainer's command line.
"""

import argparse
import copy
import json
import math
import pathlib
import platform
import sys
import time

import torch

from . import frontier as _frontier
from .config import resolve
from .loop import Trainer, flushed_denormals
from .models import unwrap
from .plots import critic_contour, digit_grid, pyplot

NAMES = ("weights", "grad-norms", "toy", "convergence", "digits", "text")
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
TOY_REGULARIZERS = ("clip", "gp", "lp", "r1", "dragan", "fd", "none")


def _plt():
    plt = pyplot()
    if plt is None:
        raise RuntimeError("the experiments draw with matplotlib: pip install matplotlib")
    return plt


class Context:
    """Where an experiment writes, how big it runs, and the progress bars it shows."""

    def __init__(self, out, quick, scale=1.0, progress=True, jobs=1, threads=None):
        self.out, self.quick, self.scale, self.progress = pathlib.Path(out), quick, scale, progress
        self.jobs, self.threads = jobs, threads    # runs at a time (frontier only), torch threads of each

    def steps(self, quick, full):
        return max(2, int(round((quick if self.quick else full) * self.scale)))

    def seconds(self, quick, full):
        return (quick if self.quick else full) * self.scale

    def train(self, label, **options):
        """A trained Trainer (in memory) for a config built from `options`."""
        config = resolve(options)
        trainer = Trainer(config, out=None, progress=self.progress)
        if self.progress:
            print(f"  {label}: {config['dataset']}/{config['regularizer']}, width {config['width']}, "
                  f"{config['steps']} steps" + (f" or {config['time_budget']:.0f} s" if config["time_budget"] else ""),
                  flush=True)
        trainer.run()
        return trainer

    def save(self, fig, name):
        path = self.out / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        _plt().close(fig)
        return path.name


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _last(trainer, key):
    value = trainer.latest(key)
    return math.nan if value is None else value


# --------------------------------------------------------------------------------------------- weights

def weights(ctx):
    """Critic weight histograms after training on the Swiss roll: clip (c = 0.01) vs GP."""
    width = 128 if ctx.quick else 512
    steps = ctx.steps(500, 2000)
    runs = {reg: ctx.train(reg, dataset="swissroll", regularizer=reg, width=width, steps=steps,
                           eval_every=steps) for reg in ("clip", "gp")}
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    numbers = {}
    for ax, (reg, trainer) in zip(axes, runs.items()):
        w = torch.cat([m.weight.detach().flatten().float().cpu() for m in unwrap(trainer.critic).modules()
                       if isinstance(m, torch.nn.Linear)])
        ax.hist(w.numpy(), bins=100, color="tab:blue" if reg == "clip" else "tab:green")
        ax.set_yscale("log")
        ax.set_xlabel("critic weight")
        ax.set_ylabel("count")
        c = trainer.config["clip"]
        if reg == "clip":
            ax.set_title(f"weight clipping, c = {c}")
            at_bound = float(((w.abs() - c).abs() <= 0.01 * c).float().mean())
            numbers[reg] = dict(at_bound=at_bound, std=float(w.std()), w1=_last(trainer, "w1"))
        else:
            ax.set_title(f"gradient penalty, λ = {trainer.config['weight']}")
            numbers[reg] = dict(at_bound=math.nan, std=float(w.std()), w1=_last(trainer, "w1"))
    fig.suptitle(f"Critic weights after {steps} generator steps on the Swiss roll ({width}-wide MLPs)")
    fig.tight_layout()
    figure = ctx.save(fig, "weights.png")
    text = (f"Weight clipping leaves **{100 * numbers['clip']['at_bound']:.1f}%** of the critic's weights within "
            f"1% of the clipping bound +-c; the gradient penalty leaves a spread of weights (std "
            f"{numbers['gp']['std']:.3g}, clip's {numbers['clip']['std']:.3g}).\n\n"
            + _table(["regulariser", "weights at +-c", "weight std", "final W1"],
                     [[r, "-" if math.isnan(v["at_bound"]) else f"{100 * v['at_bound']:.1f}%", f"{v['std']:.4g}",
                       f"{v['w1']:.4f}"] for r, v in numbers.items()]))
    return dict(title="Critic weights: clipping vs gradient penalty", figures=[figure], text=text, numbers=numbers)


# ------------------------------------------------------------------------------------------ grad-norms

def layer_gradient_norms(trainer, n=256, seed=0):
    """Per linear layer of a toy MLP critic (1 = nearest the input, the last = the output layer), the norm
    of the gradient of the critic's Wasserstein loss mean D(fake) - mean D(real) with respect to that
    layer's weight matrix, on n fresh real and n generated samples."""
    g = torch.Generator().manual_seed(seed)
    # In float64, so that gradients of 1e-40 and below are measured rather than flushed to zero.
    critic = copy.deepcopy(unwrap(trainer.critic)).double()
    real = trainer.sampler.sample(n, g).to(trainer.device, torch.float64)
    fake = trainer.generate(n, g).to(trainer.device, torch.float64)
    layers = list(critic.hidden) + [critic.out]
    loss = critic(fake).mean() - critic(real).mean()
    grads = torch.autograd.grad(loss, [m.weight for m in layers])
    return [float(x.norm()) for x in grads]


def grad_norms(ctx):
    """Gradient norms through a critic of 12 hidden layers on the Swiss roll: clip with three bounds, and GP."""
    width = 128 if ctx.quick else 512
    steps = ctx.steps(100, 1000)
    settings = [("clip", 0.1), ("clip", 0.01), ("clip", 0.001), ("gp", None)]
    curves = {}
    for reg, c in settings:
        label = f"clip c={c}" if reg == "clip" else "gradient penalty"
        opts = dict(dataset="swissroll", regularizer=reg, width=width, critic_depth=12, steps=steps,
                    eval_every=steps)
        if c is not None:
            opts["clip"] = c
        curves[label] = layer_gradient_norms(ctx.train(label, **opts))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    positive = [v for norms in curves.values() for v in norms if v > 0]
    floor = min(positive) / 100 if positive else 1e-30
    for (label, norms), marker in zip(curves.items(), "os^D"):
        layers = range(1, len(norms) + 1)
        line, = ax.plot([i for i, v in zip(layers, norms) if v > 0], [v for v in norms if v > 0], marker=marker,
                        label=label)
        dead = [i for i, v in zip(layers, norms) if v == 0]
        if dead:       # exactly zero: every ReLU unit feeding that layer is off for every sample
            ax.plot(dead, [floor] * len(dead), linestyle="none", marker="x", color=line.get_color())
    if any(v == 0 for norms in curves.values() for v in norms):
        ax.axhline(floor, color="grey", linewidth=0.8, linestyle=":")
        ax.annotate("x: exactly 0 (dead ReLU layer)", (1, floor), xytext=(0, 4), textcoords="offset points",
                    fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("critic layer (1 = nearest the input, 13 = the output layer)")
    ax.set_ylabel("||d loss / d W|| of the layer")
    ax.set_title(f"Critic-loss gradient per layer, 12 hidden layers ({steps} steps, Swiss roll)", fontsize=10)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    figure = ctx.save(fig, "grad_norms.png")
    rows = []
    numbers = {}
    for label, norms in curves.items():
        ratio = norms[0] / norms[-1] if norms[-1] > 0 else math.inf
        numbers[label] = dict(norms=norms, first_over_last=ratio, smallest=min(norms), largest=max(norms))
        rows.append([label, f"{min(norms):.3g}", f"{max(norms):.3g}", f"{norms[0]:.3g}", f"{norms[-1]:.3g}"])
    text = ("Norm of the critic loss's gradient with respect to each layer's weight matrix after training "
            "(float64, 256 real and 256 generated samples). Gradients that vanish sit orders of magnitude below "
            "the gradient penalty's at every layer; exploding ones above it and growing toward the input. A 0 "
            "means every ReLU unit feeding that layer is off for every sample.\n\n"
            + _table(["critic", "smallest over layers", "largest over layers", "layer 1", "layer 13 (output)"],
                     rows))
    return dict(title="Gradient norms through a deep critic", figures=[figure], text=text, numbers=numbers)


# ------------------------------------------------------------------------------------------------- toy

def toy(ctx):
    """Critic contours and final W1 for every toy set and regulariser."""
    width = 128 if ctx.quick else 512
    steps = ctx.steps(400, 2000)
    plt = _plt()
    fig, axes = plt.subplots(len(TOY_SETS), len(TOY_REGULARIZERS),
                             figsize=(2.3 * len(TOY_REGULARIZERS), 2.4 * len(TOY_SETS)))
    numbers, floors = {}, {}
    for i, dataset in enumerate(TOY_SETS):
        for j, reg in enumerate(TOY_REGULARIZERS):
            trainer = ctx.train(f"{dataset} {reg}", dataset=dataset, regularizer=reg, width=width, steps=steps,
                                eval_every=steps)
            w1 = _last(trainer, "w1")
            numbers.setdefault(dataset, {})[reg] = w1
            floors[dataset] = trainer.evaluator().floor
            ax = axes[i, j]
            critic_contour(ax, trainer, torch.Generator().manual_seed(1), n=300, grid=80)
            ax.set_title(f"{reg}: W1 {w1:.3f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(dataset)
    fig.suptitle(f"Critic value (contours), real (orange) and generated (green) samples after {steps} steps, "
                 f"{width}-wide MLPs")
    fig.tight_layout()
    figure = ctx.save(fig, "toy.png")
    rows = [[d] + [f"{numbers[d][r]:.4f}" for r in TOY_REGULARIZERS] + [f"{floors[d]:.4f}"] for d in TOY_SETS]
    text = ("Final exact W1 between 1,000 generated and 1,000 fresh real samples (lower is better; one seed, "
            f"{steps} generator steps, toy defaults: batch 256, n_critic 5, λ 0.1). 'real' is W1 between two "
            "real samples of 1,000: the score of a perfect generator.\n\n"
            + _table(["dataset"] + list(TOY_REGULARIZERS) + ["real"], rows))
    numbers = dict(w1=numbers, real=floors)
    return dict(title="Toy sets: critics and samples per regulariser", figures=[figure], text=text,
                numbers=numbers)


# ----------------------------------------------------------------------------------------- convergence

def convergence(ctx):
    """W1 against training seconds on 25 Gaussians, equal time budgets: clip, GP, lazy GP (k=4), FD."""
    width = 128 if ctx.quick else 512
    budget = ctx.seconds(15, 240)
    evals = 20
    methods = [("clip", dict(regularizer="clip")), ("gp", dict(regularizer="gp")),
               ("gp, lazy 4", dict(regularizer="gp", lazy=4)), ("fd", dict(regularizer="fd"))]
    curves, numbers = {}, {}
    for label, opts in methods:
        # Steps are a ceiling; the time budget ends the run. Evaluate about `evals` times along the way.
        probe = ctx.train(label + " (speed probe)", dataset="25gaussians", width=width, steps=5, eval_every=5,
                          **opts)
        per_step = probe.train_seconds / max(probe.step, 1)
        expected = max(10, int(budget / per_step))
        trainer = ctx.train(label, dataset="25gaussians", width=width, steps=10 * expected,
                            eval_every=max(1, expected // evals), time_budget=budget, **opts)
        points = [(r["seconds"], r["w1"]) for r in trainer.history if r.get("w1") is not None]
        curves[label] = points
        numbers[label] = dict(steps=trainer.step, seconds=trainer.train_seconds,
                              steps_per_second=trainer.step / trainer.train_seconds, final_w1=points[-1][1],
                              best_w1=min(p[1] for p in points))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("W1 (1,000 vs 1,000 samples)")
    ax.set_yscale("log")
    ax.set_title(f"25 Gaussians, {width}-wide MLPs, {budget:.0f} s each")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    floor = trainer.evaluator().floor
    ax.axhline(floor, color="grey", linestyle=":", linewidth=1)
    ax.annotate("two real samples", (0, floor), xytext=(2, 3), textcoords="offset points", fontsize=8,
                color="grey")
    figure = ctx.save(fig, "convergence.png")
    rows = [[k, v["steps"], f"{v['steps_per_second']:.1f}", f"{v['final_w1']:.4f}", f"{v['best_w1']:.4f}"]
            for k, v in numbers.items()]
    text = (f"Same wall-clock budget ({budget:.0f} s of training each, evaluation excluded; "
            f"{torch.get_num_threads()} CPU thread(s) unless run on a GPU). The finite-difference penalty needs "
            "no double backward; lazy GP computes the penalty every 4th critic step with weight x4. W1 of two real "
            f"samples of 1,000: {floor:.4f}.\n\n"
            + _table(["method", "steps", "steps/s", "final W1", "best W1"], rows))
    return dict(title="Convergence against wall-clock time", figures=[figure], text=text, numbers=numbers)


# ---------------------------------------------------------------------------------------------- digits

def digits(ctx):
    """8x8 digits: the Frechet distance over training and samples, for clip, GP and FD."""
    steps = ctx.steps(400, 3000)
    regs = ("clip", "gp", "fd")
    runs = {reg: ctx.train(f"digits {reg}", dataset="digits", regularizer=reg, steps=steps,
                           eval_every=max(1, steps // 10)) for reg in regs}
    plt = _plt()
    fig = plt.figure(figsize=(14, 3.8))
    grid = fig.add_gridspec(1, 2 + len(regs), width_ratios=[1.6] + [1] * (1 + len(regs)))
    ax = fig.add_subplot(grid[0, 0])
    numbers = {}
    for reg, trainer in runs.items():
        records = [r for r in trainer.history if r.get("frechet") is not None]
        ax.plot([r["step"] for r in records], [r["frechet"] for r in records], marker=".", label=reg)
        numbers[reg] = dict(final=records[-1]["frechet"], best=min(r["frechet"] for r in records),
                            steps=trainer.step, seconds=trainer.train_seconds)
    frechet = next(iter(runs.values())).evaluator().frechet
    ax.axhline(frechet.floor, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("generator step")
    ax.set_ylabel("Frechet distance (classifier features)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    real = next(iter(runs.values())).sampler.heldout[:36]
    panels = [("held-out real digits", real)]
    panels += [(f"{reg}: FD {numbers[reg]['final']:.1f}", trainer.generate(36, torch.Generator().manual_seed(0)))
               for reg, trainer in runs.items()]
    for k, (title, images) in enumerate(panels):
        sub = fig.add_subplot(grid[0, 1 + k])
        sub.imshow(digit_grid(images).numpy(), cmap="gray_r", vmin=-1, vmax=1)
        sub.set_title(title, fontsize=10)
        sub.axis("off")
    fig.suptitle(f"8x8 digits, {steps} generator steps (dotted: training vs held-out real digits)")
    fig.tight_layout()
    figure = ctx.save(fig, "digits.png")
    rows = [[reg, f"{v['final']:.2f}", f"{v['best']:.2f}", f"{v['seconds']:.0f}"] for reg, v in numbers.items()]
    rows.append(["real digits (train vs held-out)", f"{frechet.floor:.2f}", "", ""])
    numbers["real"] = frechet.floor
    numbers["classifier_accuracy"] = frechet.accuracy
    text = ("Frechet distance between the 128-d features of a small digit classifier (held-out accuracy "
            f"{100 * frechet.accuracy:.1f}%) on 1,000 generated digits and on the 360 held-out real ones; "
            "lower is better. Conv nets, batch 64, n_critic 5, λ 10 (clip: RMSprop 5e-5, c 0.01).\n\n"
            + _table(["regulariser", "final", "best", "training s"], rows))
    return dict(title="Digits: Frechet distance and samples", figures=[figure], text=text, numbers=numbers)


# ------------------------------------------------------------------------------------------------ text

def text(ctx):
    """A character-level WGAN-GP on Python's own documentation: n-gram JS over training, samples."""
    # --quick: a narrower, shallower net and Adam at 5e-4 instead of the paper's 1e-4, so that learning shows
    # within minutes (at 1e-4 the same net still writes mostly 'e', 't' and spaces after 600 steps).
    width, depth, lr = (64, 2, 5e-4) if ctx.quick else (128, 5, 1e-4)
    steps = ctx.steps(500, 1500)
    trainer = ctx.train("text gp", dataset="text", regularizer="gp", width=width, depth=depth, lr=lr, steps=steps,
                        eval_every=max(1, steps // 10))
    records = [r for r in trainer.history if r.get("js4") is not None]
    floor = trainer.evaluator().floor
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for n, colour in zip(range(1, 5), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        ax.plot([r["step"] for r in records], [r[f"js{n}"] for r in records], marker=".", color=colour,
                label=f"JS-{n}")
        ax.axhline(floor[f"js{n}"], color=colour, linestyle=":", linewidth=1)
    ax.set_xlabel("generator step")
    ax.set_ylabel("JS divergence (bits)")
    ax.set_title(f"Character n-gram JS vs held-out text (dotted: real text)\nwidth {width}, {depth} blocks, "
                 f"Adam lr {lr:g}, {steps} steps", fontsize=10)
    ax.legend()
    ax.grid(True, alpha=0.3)
    figure = ctx.save(fig, "text.png")
    pick = sorted({0, len(records) // 2, len(records) - 1})
    sample_lines = []
    for i in pick:
        r = records[i]
        sample_lines.append(f"Step {r['step']} (JS-4 {r['js4']:.3f}):\n")
        sample_lines += [f"    {s}" for s in r["samples"][:5]]
        sample_lines.append("")
    last = records[-1]
    numbers = dict(steps=trainer.step, seconds=trainer.train_seconds,
                   final={f"js{n}": last[f"js{n}"] for n in range(1, 5)}, real_text=floor,
                   samples=last["samples"])
    text_md = ("Jensen-Shannon divergence (base 2) between the character n-gram distributions of 1,024 generated "
               "sequences of 32 characters and 1,024 held-out windows; the 'real text' row is 1,024 training "
               "windows scored the same way (the floor a perfect generator would reach).\n\n"
               + _table(["", "JS-1", "JS-2", "JS-3", "JS-4"],
                        [["generated, final", *(f"{last[f'js{n}']:.4f}" for n in range(1, 5))],
                         ["real text", *(f"{floor[f'js{n}']:.4f}" for n in range(1, 5))]])
               + "\n\nSamples (argmax decoding):\n\n" + "\n".join(sample_lines))
    return dict(title="Text: a character-level WGAN-GP", figures=[figure], text=text_md, numbers=numbers)


def frontier(ctx):
    """The cost-quality frontier (gpkernels/trainer/frontier.py)."""
    return _frontier.frontier(ctx, _table, _plt())


EXPERIMENTS = {"weights": weights, "grad-norms": grad_norms, "toy": toy, "convergence": convergence,
               "digits": digits, "text": text, "frontier": frontier}


def write_report(out, sections, quick, elapsed):
    lines = ["# gpkernels experiments" + (" (--quick)" if quick else ""), "",
             f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
             f"torch {torch.__version__}, Python {platform.python_version()}. "
             + ("Seeds as the section says. " if any(s["name"] == "frontier" for s in sections) else
                "One seed per run. ") +
             f"Total time {elapsed:.0f} s.", ""]
    for s in sections:
        lines += [f"## {s['title']}", ""]
        lines += [f"![{s['title']}]({f})" for f in s["figures"]]
        lines += ["", s["text"], "", f"_{s['seconds']:.0f} s._", ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps({s["name"]: s["numbers"] for s in sections}, indent=1,
                                                 default=float))


def main(argv=None, prog="python -m gpkernels experiments"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=NAMES + ("frontier", "all"))
    p.add_argument("--out", required=True, metavar="DIR", help="where the PNGs, report.md and summary.json go")
    p.add_argument("--quick", action="store_true", help="small nets and budgets: minutes on two CPU cores")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every step count and time budget (the test suite uses 0.05)")
    p.add_argument("--jobs", type=int, default=1,
                   help="frontier: runs at a time, each in its own process with --threads threads (default 1); "
                        "its step counts are fixed by a calibration first, so this changes no number")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not (args.scale > 0):
        p.error("--scale must be > 0")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    elif args.jobs > 1:
        p.error("--jobs needs --threads (e.g. --jobs 2 --threads 1 on two cores)")
    out = pathlib.Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {out}: {e.strerror}")
    ctx = Context(out, args.quick, args.scale, progress=not args.no_progress, jobs=args.jobs, threads=args.threads)
    names = NAMES if args.name == "all" else (args.name,)
    start = time.perf_counter()
    sections = []
    with flushed_denormals():                # weight clipping's subnormal floats, as on the command line
        for name in names:
            if ctx.progress:
                print(f"{name}:", flush=True)
            t0 = time.perf_counter()
            section = EXPERIMENTS[name](ctx)
            section.update(name=name, seconds=time.perf_counter() - t0)
            sections.append(section)
            write_report(out, sections, args.quick, time.perf_counter() - start)
    print(f"wrote {out / 'report.md'} ({', '.join(f for s in sections for f in s['figures'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
