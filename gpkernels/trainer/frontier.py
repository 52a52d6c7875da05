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


def _at_or_before(records, key, step):
    chosen = None
    for r in records:
        if r.get(key) is not None and r["step"] <= step:
            chosen = r[key]
    return chosen


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
    """One run (in this process or a worker): the records with a metric, the steps trained, whether it
    diverged."""
    from .loop import Trainer, flushed_denormals

    threads, options, key = task
    if threads is not None:
        torch.set_num_threads(threads)
    with flushed_denormals():
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
    budget in calibrated steps; return the numbers and the curves."""
    budget = ctx.seconds(4, 60)
    rounds = 3 if ctx.quick else 5
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
    numbers, curves = {}, {}
    for dataset in DATASETS:
        key, cost = _metric(dataset), per_step[dataset]
        runs = {(label, seed): next(results) for label, _ in VARIANTS for seed in range(seeds)}
        table = {}
        for label, _ in VARIANTS:
            rs = [runs[(label, s)] for s in range(seeds)]
            final = _stats([r["records"][-1]["value"] if r["records"] else None for r in rs])
            best = _stats([min(x["value"] for x in r["records"]) if r["records"] else None for r in rs])
            equal_steps = _stats([_at_or_before(r["records"], "value", plan[dataset]["common"]) for r in rs])
            table[label] = dict(cost=cost[label] / cost[BASELINE], seconds_per_step=cost[label], final=final,
                                best=best, equal_steps=equal_steps, steps=plan[dataset]["steps"][label],
                                diverged=sum(r["diverged"] is not None for r in rs))
            curves[(dataset, label)] = [[(x["step"] * cost[label], x["value"]) for x in r["records"]] for r in rs]
        numbers[dataset] = dict(metric=key, budget_seconds=budget, common_steps=plan[dataset]["common"],
                                seeds=seeds, variants=table, verdict=verdict(table))
    return numbers, curves


def verdict(table):
    """Variants at <= BUDGET x the plain step whose final metric reaches GP's (mean within the larger of the
    two seeds' standard deviations of GP's mean, or better) with no seed diverged."""
    gp_mean, gp_std = table[TARGET]["final"]
    reach, miss = [], []
    for label, row in table.items():
        if label in (TARGET, BASELINE) or row["cost"] > BUDGET:
            continue
        mean, std = row["final"]
        ok = mean <= gp_mean + max(gp_std, std) and not row.get("diverged")
        (reach if ok else miss).append(label)
    return dict(reach=reach, miss=miss)


def pareto(points):
    """Indices of the points (cost, metric) no other point beats on both."""
    front = []
    for i, (c, m) in enumerate(points):
        if not any((c2 <= c and m2 <= m) and (c2 < c or m2 < m) for j, (c2, m2) in enumerate(points) if j != i):
            front.append(i)
    return front


def figures(ctx, numbers, curves, plt):
    names = []
    fig, axes = plt.subplots(1, len(numbers), figsize=(5.2 * len(numbers), 4.2), squeeze=False)
    axes = axes[0]
    for ax, (dataset, res) in zip(axes, numbers.items()):
        labels = list(res["variants"])
        pts = [(res["variants"][k]["cost"], res["variants"][k]["final"][0]) for k in labels]
        errs = [res["variants"][k]["final"][1] for k in labels]
        for (c, m), e, k in zip(pts, errs, labels):
            ax.errorbar(c, m, yerr=e, fmt="o", ms=4, capsize=2)
            ax.annotate(k, (c, m), xytext=(3, 3), textcoords="offset points", fontsize=7)
        front = sorted((pts[i] for i in pareto(pts) if math.isfinite(pts[i][1])))
        ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linewidth=1, label="Pareto frontier")
        ax.axvline(BUDGET, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(f"cost per step (x {BASELINE})")
        ax.set_ylabel(f"final {res['metric']} (mean +- std, {res['seeds']} seeds)")
        ax.set_yscale("log")
        ax.set_title(f"{dataset}, {res['budget_seconds']:.0f} s each")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    names.append(ctx.save(fig, "frontier.png"))
    fig, axes = plt.subplots(1, len(numbers), figsize=(5.2 * len(numbers), 4.2), squeeze=False)
    axes = axes[0]
    for ax, (dataset, res) in zip(axes, numbers.items()):
        for label in res["variants"]:
            for j, points in enumerate(curves[(dataset, label)]):
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1, alpha=0.8 if j == 0 else 0.25,
                            label=label if j == 0 else None)
        ax.set_xlabel("training seconds (steps x calibrated seconds per step)")
        ax.set_ylabel(res["metric"])
        ax.set_yscale("log")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].legend(fontsize=7, ncol=2)
    names.append(ctx.save(fig, "frontier_time.png"))
    return names


def frontier(ctx, table_fn, plt):
    numbers, curves = run(ctx)
    figs = figures(ctx, numbers, curves, plt)
    first = next(iter(numbers.values()))
    parts = [f"Every run: the same wall-clock budget, {first['budget_seconds']:.0f} s of training (evaluation "
             f"excluded) in calibrated steps: each variant's seconds per generator step were measured first, "
             f"{3 if ctx.quick else 5} round-robin turns of {CAL_STEPS} steps per variant with nothing else of the "
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
