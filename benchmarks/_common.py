"""Pieces shared by the benchmark scripts: timing, robust statistics, the environment a result came from,
the correctness checks' error measures, and the report files.

Not a package module: the scripts run as `python benchmarks/<script>.py`, which puts this folder on
sys.path, and import it as `_common`.
"""

import csv
import datetime
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import gpkernels
except ImportError:  # run from a checkout without PYTHONPATH: use the repository's package
    sys.path.insert(0, REPO)
    import gpkernels


# ----------------------------------------------------------------------------------------------- timing

class Timer:
    """Per-call seconds of `fn` run `inner` times back to back (perf_counter on CPU, CUDA events on GPU)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn, inner):
        if self.cuda:
            torch.cuda.synchronize()
            self.start.record()
            for _ in range(inner):
                fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


def _round_robin(fns, inner, timer, repeats):
    """repeats samples per function of inner[name] calls each, taken round-robin with the starting function
    rotating every round, so that background load hits all of them alike; {name: sorted seconds per call}."""
    names = list(fns)
    samples = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(timer(fns[name], inner[name]))
    return {name: sorted(s) for name, s in samples.items()}


def measure(fns, timer, repeats, min_sample_s, warmup):
    """{name: sorted per-call seconds}, `repeats` samples each, taken round-robin over `fns`."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        once = min(timer(fn, 1) for _ in range(3))
        inner[name] = max(1, math.ceil(min_sample_s / max(once, 1e-9)))
    return _round_robin(fns, inner, timer, repeats)


def measure_long(fns, timer, repeats, min_sample_s, warmup):
    """As measure(), for calls that may each take far longer than a sample: a call that already lasts
    min_sample_s fixes the inner loop at 1 after one calibration call instead of three, which for
    hundred-millisecond calls saves two full calls per provider. Same round-robin sampling."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        once = timer(fn, 1)
        if once < min_sample_s:
            once = min([once] + [timer(fn, 1) for _ in range(2)])
        inner[name] = max(1, math.ceil(min_sample_s / max(once, 1e-9)))
    return _round_robin(fns, inner, timer, repeats)


def quartiles(samples):
    """(first quartile, median, third quartile) of `samples`."""
    if len(samples) < 2:
        return samples[0], samples[0], samples[0]
    q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, statistics.median(samples), q3


def median_iqr(samples):
    q1, med, q3 = quartiles(samples)
    return med, q3 - q1


# ----------------------------------------------------------------------------------------------- environment

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def slug(text):
    text = re.sub(r"\((R|TM|tm|r)\)", "", text)
    text = re.sub(r"\b(CPU|Processor|with Radeon.*|@.*)$", "", text.strip()).strip()
    text = re.sub(r"\b\d+-Core\b", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def machine_name(device, threads):
    if device.type == "cuda":
        return slug(torch.cuda.get_device_name(device))
    return f"cpu-{slug(cpu_model())}-{threads}t"


def git_commit():
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def environment_lines(device, threads=None):
    """Markdown bullet lines naming the device, CPU, thread count, versions, commit and date of a run.
    `threads`: the text for the thread line; None reports torch.get_num_threads() now."""
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if threads is None:
        threads = str(torch.get_num_threads())
    return [
        f"- device: {dev}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)",
        f"- torch threads: {threads}" + ("" if device.type == "cpu" else " (host side only)"),
        f"- torch {torch.__version__}, gpkernels {gpkernels.__version__}, Python {platform.python_version()}",
        f"- git commit: {git_commit()}",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
    ]


def output_dir(out, device, threads):
    """`out` (--out) if given, else benchmarks/results/<machine>/ for `device` and the thread counts `threads`
    (a list: "-".join of them names the folder, e.g. cpu-amd-epyc-1-2t); created if missing."""
    out = out or os.path.join(REPO, "benchmarks", "results", machine_name(device, "-".join(map(str, threads))))
    os.makedirs(out, exist_ok=True)
    return out


def command_line(script, argv):
    """The command a report names: `python benchmarks/<script>.py` and the arguments (sys.argv's when argv
    is None, as for a script run)."""
    return f"python benchmarks/{script}.py " + " ".join(sys.argv[1:] if argv is None else argv)


def write_csv(path, rows):
    """rows (dicts with the same keys) as CSV, floats to 6 significant digits."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


# ----------------------------------------------------------------------------------------------- checking
# Two relative errors with two meanings, both kept: bench_penalty, bench_step and bench_conv_weight_grad judge
# (and bench_conv_weight_grad reports) the elementwise-worst one, bench_head's tolerances are normwise.

def maxabs_rel_err(got, want):
    """max |got - want| / max |want|, in float64: the largest elementwise error relative to the largest
    entry of `want` (0/0 guarded by a 1e-30 floor)."""
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def normwise_rel_err(got, want):
    """||got - want|| / ||want|| (2-norms over all elements), in float64: an error averaged over the tensor,
    which tolerates a few large elementwise errors in low precision (0/0 guarded by a 1e-300 floor)."""
    got, want = got.detach().double(), want.detach().double()
    return (torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-300)).item()


def loss_and_grads(module, loss_fn):
    """(loss, {name: grad}) of `module`'s parameters after loss_fn().backward(), without stepping: a missing
    .grad counts as zeros; the .grad fields are left unset before and after."""
    module.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    grads = {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    return loss.detach(), grads


def worst_error(got, want, scale=1.0):
    """(what, maxabs_rel_err) where the (loss, {name: grad}) pair `got` differs most from `scale` times `want`
    ("loss" or "grad of <name>"); a NaN error sorts last, so that it is the one reported."""
    errs = [("loss", maxabs_rel_err(got[0], want[0] * scale))] + [
        (f"grad of {n}", maxabs_rel_err(got[1][n], want[1][n] * scale)) for n in want[1]]
    return max(errs, key=lambda t: float("inf") if t[1] != t[1] else t[1])


def first_line(exc, limit=300):
    """`ExceptionType: first line of the message` (the type alone for an empty message), cut to `limit`
    characters, for a note in a report."""
    text = str(exc).strip().splitlines()
    return (type(exc).__name__ + (": " + text[0] if text else ""))[:limit]


# ----------------------------------------------------------------------------------------------- memory

def _cpu_allocation_events(fn):
    """(start_ns, bytes) of every CPU allocation (+) and free (-) during fn(), from torch.profiler. The raw
    kineto list is read because profile.events() folds an allocation made inside an op into that op."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    return sorted(events)


def peak_extra_bytes(fn, device):
    """Peak bytes allocated during one call of fn() beyond those allocated before it (fn's outputs, which are
    dropped at its end, included). CUDA: the caching allocator's statistics; CPU: the running sum of the
    profiler's allocation events, in time order."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    running = peak = 0
    for _, nbytes in _cpu_allocation_events(fn):
        running += nbytes
        peak = max(peak, running)
    return peak


def peak_method_check(device, numel=1_000_000):
    """(measured, expected) peak bytes of a clone of `numel` fp32, the case whose answer is known (4 bytes
    per element), to validate peak_extra_bytes on this torch version before trusting it."""
    src = torch.randn(numel, device=device)
    peak_extra_bytes(src.clone, device)  # the first profiled call pays any one-time profiler set-up
    return peak_extra_bytes(src.clone, device), 4 * numel


def write_report(out, stem, md_lines, rows, plot, no_plot, script):
    """Write `stem.md` in `out` and, unless no_plot, `stem.png` through plot(rows, path), which returns False
    when matplotlib is missing; say what was written (the CSV is written before, by write_csv)."""
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write("\n".join(md_lines))
    written = [stem + ".csv", stem + ".md"]
    if not no_plot:
        if plot(rows, os.path.join(out, stem + ".png")):
            written.append(stem + ".png")
        else:
            print(f"{script}: matplotlib is not installed; skipping the PNG chart "
                  f"(pip install matplotlib to get it)", file=sys.stderr)
    print(f"wrote {', '.join(written)} in {out}", file=sys.stderr)


def timing_bars(ax, rs, label_key, colours, ylabel, title):
    """One bar per row of rs (median_ms, with q1_ms..q3_ms as error bars), labelled with x<label_key>."""
    x = range(len(rs))
    med = [r["median_ms"] for r in rs]
    err = [[r["median_ms"] - r["q1_ms"] for r in rs], [r["q3_ms"] - r["median_ms"] for r in rs]]
    ax.bar(x, med, yerr=err, capsize=3, color=colours)
    for k, r in zip(x, rs):
        ax.text(k, r["q3_ms"], f"x{r[label_key]:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x))
    ax.set_xticklabels([r["provider"] for r in rs], rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)


VERDICT_LEGEND = ("Verdicts (\"not slower\": ratio >= 1; \"within noise\": ratio < 1 but the interquartile ranges "
                  "overlap; else SLOWER):")


def verdict(rows, provider, baseline):
    """One line: `provider` against `baseline` in the configuration of `rows`: "not slower" when the
    median ratio is >= 1, "within noise" when below 1 with overlapping interquartile ranges, else SLOWER."""
    got = next(r for r in rows if r["provider"] == provider)
    ref = next(r for r in rows if r["provider"] == baseline)
    ratio = ref["median_ms"] / got["median_ms"]
    if ratio >= 1.0:
        word = "not slower"
    elif got["q1_ms"] <= ref["q3_ms"]:
        word = "within noise (slower median, interquartile ranges overlap)"
    else:
        word = "SLOWER"
    return f"{provider} vs {baseline}: x{ratio:.3f} ({got['median_ms']:.4g} vs {ref['median_ms']:.4g} ms), {word}"
