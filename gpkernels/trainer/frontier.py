"""The cost-quality frontier of the Lipschitz regularisers (`python -m gpkernels experiments frontier`).

For each data set (25 Gaussians, Swiss roll, 8x8 digits), each variant (weight clipping, GP, LP, lazy GP
k in {2, 4, 8, 16}, subsampled GP f in {1/2, 1/4, 1/8}, lazy + subsampled combinations of about the same cost,
the finite-difference penalty) and several seeds, one run with the same wall-clock budget.

Equal wall-clock, measured once and cleanly. First every variant's seconds per generator step are measured
(`calibrate`): one trainer per variant, all timed in turns (round-robin, several rounds, the median), while
nothing else of the experiment runs. Every run then trains for budget / (its variant's seconds per step)
generator steps. Its length is thus fixed before it starts: the runs can go in parallel (`--jobs`), and a busy
machine slows the experiment down without changing a single number. Reported per variant: the cost of a step
as a multiple of weight clipping's (the plain WGAN step) from that calibration, the final and best metric at
equal wall-clock, and the metric at an equal number of generator steps (the last evaluation at or before the
step count of the slowest variant), as mean +- std over seeds; a figure of final metric against cost with the
Pareto frontier, and one of the metric against training seconds (steps x seconds per step).
"""

import contextlib
import math
import statistics
import time

import torch

from .config import resolve

DATASETS = ("25gaussians", "swissroll", "digits")
VARIANTS = [
    ("clip", dict(regularizer="clip")),
    ("gp", dict(regularizer="gp")),
    ("lp", dict(regularizer="lp")),
    *[(f"gp lazy {k}", dict(regularizer="gp", lazy=k)) for k in (2, 4, 8, 16)],
    *[(f"gp f=1/{d}", dict(regularizer="gp", penalty_fraction=1 / d)) for d in (2, 4, 8)],
    ("gp lazy 2 f=1/2", dict(regularizer="gp", lazy=2, penalty_fraction=0.5)),
    ("gp lazy 4 f=1/2", dict(regularizer="gp", lazy=4, penalty_fraction=0.5)),
    ("fd", dict(regularizer="fd")),
]
BASELINE = "clip"          # the plain WGAN step, the unit of cost
TARGET = "gp"              # the quality to reach
BUDGET = 1.3               # "cheap": at most this many plain steps
WIDTH = 128                # the toy sets' MLPs, quick and full alike (digits: the trainer's default nets)
# Calibration: each timed turn is CAL_STEPS generator steps (x n_critic = 5 critic steps: 80, a multiple of
# every lazy interval, so each turn holds the same number of penalty steps), after CAL_WARMUP untimed ones.
CAL_STEPS = 16
CAL_WARMUP = 3


def _metric(dataset):
    return "frechet" if dataset == "digits" else "w1"


def _sizes(dataset):
    return {} if dataset == "digits" else dict(width=WIDTH)


def _stats(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _at_or_before(records, step):
    """The value of the last record at or before `step` (records in step order), or None."""
    chosen = None
    for r in records:
        if r["step"] <= step:
            chosen = r["value"]
    return chosen


def _rounds(ctx):
    """Calibration turns per variant."""
    return 3 if ctx.quick else 5


def calibrate(dataset, variants, rounds, steps=CAL_STEPS, warmup=CAL_WARMUP):
    """{label: seconds per generator step}: one trainer per variant (seed 0), `warmup` untimed steps each,
    then `rounds` turns of `steps` timed steps per variant, round-robin with the starting variant rotating;
    the median turn. (Evaluation is not part of it, as in the runs' budgets.)"""
    from .loop import Trainer

    trainers = {}
    for label, opts in variants:
        trainers[label] = Trainer(resolve(dict(dataset=dataset, seed=0, steps=10 ** 6, eval_every=10 ** 6,
                                               **_sizes(dataset), **opts)), out=None, progress=False)
        for _ in range(warmup):
            trainers[label].train_step()
    labels = list(trainers)
    turns = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            t = trainers[label]
            sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                t.train_step()
            sync()
            turns[label].append((time.perf_counter() - start) / steps)
    return {label: statistics.median(v) for label, v in turns.items()}


def _train(task):
    """One run (in this process, or in a worker when threads is given): the records with a metric, the steps
    trained, whether it diverged. A worker flushes subnormal floats as the experiments' main process does (a
    spawned process does not inherit that); in this process the caller's setting stands."""
    from .loop import Trainer, flushed_denormals

    threads, options, key = task
    if threads is not None:
        torch.set_num_threads(threads)
    with flushed_denormals() if threads is not None else contextlib.nullcontext():
        t = Trainer(resolve(options), out=None, progress=False)
        t.run(quiet=True)
    return dict(records=[dict(step=r["step"], value=r[key]) for r in t.history if r.get(key) is not None],
                steps=t.step, diverged=t.diverged)


def _map(ctx, tasks, labels):
    """_train over tasks, ctx.jobs at a time, in order; a progress bar over the runs."""
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tasks), unit="run", dynamic_ncols=True, desc="frontier")
    results = []
    try:
        if ctx.jobs <= 1:
            for task, label in zip(tasks, labels):
                results.append(_train(task))
                if bar is not None:
                    bar.set_postfix_str(label)
                    bar.update()
        else:
            import concurrent.futures
            import multiprocessing

            with concurrent.futures.ProcessPoolExecutor(ctx.jobs, mp_context=multiprocessing.get_context("spawn")) \
                    as pool:
                futures = [pool.submit(_train, task) for task in tasks]
                try:
                    for fut in concurrent.futures.as_completed(futures):
                        fut.result()                        # a failed run stops the experiment here
                        if bar is not None:
                            bar.update()
                except BaseException:
                    for fut in futures:                     # without waiting for the runs not started yet
                        fut.cancel()
                    raise
                results = [fut.result() for fut in futures]
    finally:
        if bar is not None:
            bar.close()
    return results


def run(ctx, seeds=3):
    """Calibrate every data set's variants, then train every (dataset, variant, seed) for the same wall-clock
    budget in calibrated steps. Returns {dataset: numbers}, each variant's row with its per-seed curves
    [[training seconds, metric], ...] (the figures are drawn from these alone)."""
    budget = ctx.seconds(4, 60)
    rounds = _rounds(ctx)
    evals = 5 if ctx.quick else 12
    # Calibration first, for every data set, before any run starts (the runs may then share the machine).
    per_step = {}
    for dataset in DATASETS:
        if ctx.progress:
            print(f"  calibrating {dataset}: {len(VARIANTS)} variants x {rounds} rounds of {CAL_STEPS} steps",
                  flush=True)
        per_step[dataset] = calibrate(dataset, VARIANTS, rounds)
    plan, tasks, labels = {}, [], []
    worker_threads = ctx.threads if ctx.jobs > 1 else None
    for dataset in DATASETS:
        steps = {label: max(2, round(budget / per_step[dataset][label])) for label, _ in VARIANTS}
        common = min(steps.values())
        every = max(1, common // evals)
        plan[dataset] = dict(steps=steps, common=common)
        for label, opts in VARIANTS:
            for seed in range(seeds):
                options = dict(dataset=dataset, seed=seed, steps=steps[label], eval_every=every,
                               **_sizes(dataset), **opts)
                tasks.append((worker_threads, options, _metric(dataset)))
                labels.append(f"{dataset} {label} seed {seed}")
    results = iter(_map(ctx, tasks, labels))
    numbers = {}
    for dataset in DATASETS:
        key, cost = _metric(dataset), per_step[dataset]
        runs = {(label, seed): next(results) for label, _ in VARIANTS for seed in range(seeds)}
        table = {}
        for label, _ in VARIANTS:
            rs = [runs[(label, s)] for s in range(seeds)]
            final = _stats([r["records"][-1]["value"] if r["records"] else None for r in rs])
            best = _stats([min(x["value"] for x in r["records"]) if r["records"] else None for r in rs])
            equal_steps = _stats([_at_or_before(r["records"], plan[dataset]["common"]) for r in rs])
            table[label] = dict(cost=cost[label] / cost[BASELINE], seconds_per_step=cost[label], final=final,
                                best=best, equal_steps=equal_steps, steps=plan[dataset]["steps"][label],
                                diverged=sum(r["diverged"] is not None for r in rs),
                                curves=[[[x["step"] * cost[label], x["value"]] for x in r["records"]] for r in rs])
        numbers[dataset] = dict(metric=key, budget_seconds=budget, common_steps=plan[dataset]["common"],
                                seeds=seeds, variants=table, verdict=verdict(table))
    return numbers


def verdict(table):
    """Variants at <= BUDGET x the plain step whose final metric reaches GP's: mean within GP's seed spread or
    better (mean <= GP's mean + GP's std), no seed diverged. (The variant's own spread does not widen the
    band: a variant with one bad seed has a large std and should not pass because of it.)"""
    gp_mean, gp_std = table[TARGET]["final"]
    reach, miss = [], []
    for label, row in table.items():
        if label in (TARGET, BASELINE) or row["cost"] > BUDGET:
            continue
        mean, _ = row["final"]
        ok = mean <= gp_mean + gp_std and not row.get("diverged")
        (reach if ok else miss).append(label)
    return dict(reach=reach, miss=miss)


def pareto(points):
    """Indices of the points (cost, metric) no other point beats on both."""
    front = []
    for i, (c, m) in enumerate(points):
        if not any((c2 <= c and m2 <= m) and (c2 < c or m2 < m) for j, (c2, m2) in enumerate(points) if j != i):
            front.append(i)
    return front


def _colours(plt, labels):
    """GP black, clip grey, the others tab20's colours, the same on every panel."""
    cmap = plt.get_cmap("tab20")
    others = [label for label in labels if label not in (TARGET, BASELINE)]
    colour = {label: cmap(i % 20) for i, label in enumerate(others)}
    colour.update({TARGET: "black", BASELINE: "grey"})
    return colour


def _mean_curve(seed_curves):
    """The mean over seeds at the evaluation points all seeds reached (they share the evaluation steps)."""
    seed_curves = [c for c in seed_curves if c]
    if not seed_curves:
        return []
    n = min(len(c) for c in seed_curves)
    return [(statistics.fmean(c[i][0] for c in seed_curves), statistics.fmean(c[i][1] for c in seed_curves))
            for i in range(n)]


def _log_limits(values):
    values = [v for v in values if math.isfinite(v) and v > 0]
    return (min(values) / 1.25, max(values) * 1.25) if values else None


def _panels(plt, n):
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), squeeze=False)
    return fig, axes[0]


def _log_y(ax, values):
    """Log y axis over `values` (with a margin), grid on."""
    ax.set_yscale("log")
    limits = _log_limits(values)
    if limits:
        ax.set_ylim(*limits)
    ax.grid(True, which="both", alpha=0.3)


def _save(ctx, fig, axes, name):
    """One legend for the figure (the first panel's entries), beside the panels; saved as `name`."""
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    return ctx.save(fig, name)


def figures(ctx, numbers, plt):
    """frontier.png (final metric against cost, the Pareto frontier, one colour per variant throughout) and, where
    the rows have curves, frontier_time.png (the mean over seeds against training seconds). The y range follows the
    means: a variant with one bad seed has an error bar that runs off the plot rather than flattening the rest."""
    names = []
    labels = list(next(iter(numbers.values()))["variants"])
    colour = _colours(plt, labels)
    fig, axes = _panels(plt, len(numbers))
    for ax, (dataset, res) in zip(axes, numbers.items()):
        pts = [(res["variants"][k]["cost"], res["variants"][k]["final"][0]) for k in labels]
        errs = [res["variants"][k]["final"][1] for k in labels]
        for (c, m), e, k in zip(pts, errs, labels):
            ax.errorbar(c, m, yerr=e, fmt="o", ms=5, capsize=2, color=colour[k], label=k)
        front = sorted((pts[i] for i in pareto(pts) if math.isfinite(pts[i][1])))
        ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linewidth=1, label="Pareto frontier")
        gp = res["variants"][TARGET]["final"]
        ax.axhspan(gp[0] - gp[1], gp[0] + gp[1], color="grey", alpha=0.15, label="GP mean +- std")
        ax.axvline(BUDGET, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(f"cost per step (x {BASELINE})")
        ax.set_ylabel(f"final {res['metric']} (mean +- std, {res['seeds']} seeds)")
        _log_y(ax, [p[1] for p in pts])
        ax.set_title(f"{dataset}, {res['budget_seconds']:.0f} s each")
    names.append(_save(ctx, fig, axes, "frontier.png"))
    if not any(v.get("curves") for res in numbers.values() for v in res["variants"].values()):
        return names
    fig, axes = _panels(plt, len(numbers))
    for ax, (dataset, res) in zip(axes, numbers.items()):
        values = []
        for label in labels:
            mean = _mean_curve(res["variants"][label].get("curves", []))
            if mean:
                bold = label in (BASELINE, TARGET) or label in res["verdict"]["reach"]
                ax.plot([p[0] for p in mean], [p[1] for p in mean], color=colour[label], label=label,
                        linewidth=2.0 if bold else 1.0, alpha=1.0 if bold else 0.6)
                values += [p[1] for p in mean[len(mean) // 4:]]
        ax.set_xlabel("training seconds (steps x calibrated seconds per step)")
        ax.set_ylabel(f"{res['metric']} (mean over {res['seeds']} seeds)")
        _log_y(ax, values)
        ax.set_title(f"{dataset} (thick: clip, GP, and the variants that reach GP at <= {BUDGET}x)", fontsize=9)
    names.append(_save(ctx, fig, axes, "frontier_time.png"))
    return names


def frontier(ctx, table_fn, plt):
    numbers = run(ctx)
    figs = figures(ctx, numbers, plt)
    first = next(iter(numbers.values()))
    parts = [f"Every run: the same wall-clock budget, {first['budget_seconds']:.0f} s of training (evaluation "
             f"excluded) in calibrated steps: each variant's seconds per generator step were measured first, "
             f"{_rounds(ctx)} round-robin turns of {CAL_STEPS} steps per variant with nothing else of the "
             f"experiment running, {ctx.threads or torch.get_num_threads()} torch thread(s); each run then trained "
             f"for budget / (seconds per step) steps ({ctx.jobs} run(s) at a time). Cost is that median seconds "
             f"per step as a multiple of {BASELINE}'s. 'equal steps' is the metric at the last evaluation at or "
             f"before the slowest variant's step count. Mean +- std over seeds; 'diverged' counts the seeds whose "
             f"losses became non-finite (their last evaluation counts as final)."]
    for dataset, res in numbers.items():
        rows = []
        for label, v in res["variants"].items():
            rows.append([label, f"{v['cost']:.2f}", f"{v['seconds_per_step'] * 1e3:.1f}",
                         f"{v['final'][0]:.4g} +- {v['final'][1]:.2g}", f"{v['best'][0]:.4g} +- {v['best'][1]:.2g}",
                         f"{v['equal_steps'][0]:.4g} +- {v['equal_steps'][1]:.2g}", f"{v['steps']}",
                         f"{v['diverged']}"])
        reach = ", ".join(res["verdict"]["reach"]) or "none"
        miss = ", ".join(res["verdict"]["miss"]) or "none"
        verdict_text = f"Reach GP's final {res['metric']} at <= {BUDGET}x: {reach}; cheap but short of it: {miss}."
        parts.append(f"**{dataset}** ({res['metric']}, common step count {res['common_steps']}). {verdict_text}\n\n"
                     + table_fn(["variant", "cost (x clip)", "ms/step", "final", "best", "equal steps", "steps",
                                 "diverged"], rows))
    return dict(title="Cost-quality frontier", figures=figs, text="\n\n".join(parts), numbers=numbers)
