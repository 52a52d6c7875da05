"""The cost-quality frontier of the Lipschitz regularisers (`python -m gpkernels experiments frontier`).

For each data set (25 Gaussians, Swiss roll, 8x8 digits), each variant (weight clipping, GP, LP, lazy GP
k in {2, 4, 8, 16}, subsampled GP f in {1/2, 1/4, 1/8}, lazy + subsampled combinations of about the same cost,
the finite-difference penalty) and several seeds, one run with the same wall-clock budget. Reported per variant:
the cost of a step as a multiple of weight clipping's (the plain WGAN step) in the same runs, the final and best
metric at equal wall-clock, and the metric at an equal number of generator steps (the last evaluation at or
before the step count the slowest variant reached), as mean +- std over seeds; a figure of final metric
against cost with the Pareto frontier, and one of the metric against training seconds.
"""

import math
import statistics

import torch

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


def _metric(dataset):
    return "frechet" if dataset == "digits" else "w1"


def _sizes(ctx, dataset):
    if dataset == "digits":
        return dict(steps=10 ** 6)
    return dict(width=128 if ctx.quick else 512, steps=10 ** 6)


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


def run(ctx, seeds=3):
    """Train every (dataset, variant, seed) for the same time budget; return the numbers and the curves."""
    budget = ctx.seconds(4, 120)
    evals = 5 if ctx.quick else 12
    numbers, curves = {}, {}
    for dataset in DATASETS:
        key = _metric(dataset)
        sizes = _sizes(ctx, dataset)
        # How far the slowest variant (full GP) gets in the budget sets a common evaluation interval, so that
        # every variant is evaluated at the same step counts.
        probe = ctx.train(f"{dataset} probe", dataset=dataset, regularizer="gp", **dict(sizes, steps=5),
                          eval_every=5, seed=0)
        slow = max(4, int(budget / max(probe.train_seconds / max(probe.step, 1), 1e-6)))
        every = max(1, slow // evals)
        runs = {}
        for label, opts in VARIANTS:
            for seed in range(seeds):
                t = ctx.train(f"{dataset} {label} seed {seed}", dataset=dataset, seed=seed, eval_every=every,
                              time_budget=budget, **sizes, **opts)
                records = [r for r in t.history if r.get(key) is not None]
                runs[(label, seed)] = dict(records=records, steps=t.step, seconds=t.train_seconds)
        common = min(r["steps"] for r in runs.values())
        per_step = {label: statistics.median(runs[(label, s)]["seconds"] / max(runs[(label, s)]["steps"], 1)
                                             for s in range(seeds)) for label, _ in VARIANTS}
        table = {}
        for label, _ in VARIANTS:
            rs = [runs[(label, s)] for s in range(seeds)]
            final = _stats([r["records"][-1][key] if r["records"] else None for r in rs])
            best = _stats([min(x[key] for x in r["records"]) if r["records"] else None for r in rs])
            equal_steps = _stats([_at_or_before(r["records"], key, common) for r in rs])
            table[label] = dict(cost=per_step[label] / per_step[BASELINE], final=final, best=best,
                                equal_steps=equal_steps, steps=_stats([r["steps"] for r in rs]))
            curves[(dataset, label)] = [[(x["seconds"], x[key]) for x in r["records"]] for r in rs]
        numbers[dataset] = dict(metric=key, budget_seconds=budget, common_steps=common, seeds=seeds,
                                variants=table, verdict=verdict(table))
    return numbers, curves


def verdict(table):
    """Variants at <= BUDGET x the plain step whose final metric reaches GP's (mean within the larger of the
    two seeds' standard deviations of GP's mean, or better)."""
    gp_mean, gp_std = table[TARGET]["final"]
    reach, miss = [], []
    for label, row in table.items():
        if label in (TARGET, BASELINE) or row["cost"] > BUDGET:
            continue
        mean, std = row["final"]
        (reach if mean <= gp_mean + max(gp_std, std) else miss).append(label)
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
        ax.set_xlabel("training seconds")
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
    parts = [f"Every run: the same wall-clock budget ({next(iter(numbers.values()))['budget_seconds']:.0f} s of "
             f"training, evaluation excluded), {torch.get_num_threads()} torch thread(s); cost is the median "
             f"seconds per generator step over the seeds, as a multiple of {BASELINE}'s in the same run. "
             f"'equal steps' is the metric at the last evaluation at or before the step count the slowest run "
             f"reached. Mean +- std over seeds."]
    for dataset, res in numbers.items():
        rows = []
        for label, v in res["variants"].items():
            rows.append([label, f"{v['cost']:.2f}", f"{v['final'][0]:.4g} +- {v['final'][1]:.2g}",
                         f"{v['best'][0]:.4g} +- {v['best'][1]:.2g}",
                         f"{v['equal_steps'][0]:.4g} +- {v['equal_steps'][1]:.2g}", f"{v['steps'][0]:.0f}"])
        reach = ", ".join(res["verdict"]["reach"]) or "none"
        miss = ", ".join(res["verdict"]["miss"]) or "none"
        verdict_text = f"Reach GP's final {res['metric']} at <= {BUDGET}x: {reach}; cheap but short of it: {miss}."
        parts.append(f"**{dataset}** ({res['metric']}, common step count {res['common_steps']}). {verdict_text}\n\n"
                     + table_fn(["variant", "cost (x clip)", "final", "best", "equal steps", "steps"], rows))
    return dict(title="Cost-quality frontier", figures=figs, text="\n\n".join(parts), numbers=numbers)
