"""The trainer's options: the command line, the paper's defaults per dataset and regulariser, and the
checks that turn a bad combination into one clear sentence.

A config is a plain dict (it is saved in every checkpoint). `resolve(given)` fills in defaults: first the
dataset's, then the regulariser's, then whatever the user gave explicitly (None = not given).
"""

import argparse
import math
import numbers

from gpkernels import backends

from .data import DATASETS, TOY

REGULARIZERS = ("clip", "gp", "lp", "r1", "dragan", "fd", "none")
PENALTIES = ("gp", "lp", "r1", "dragan", "fd")
BACKENDS = (backends.AUTO,) + tuple(backends.NAMES)


class UsageError(Exception):
    """A bad option, option combination or checkpoint: reported as one line, exit status 2."""


# Gulrajani et al. (2017): toy sets with 512-wide ReLU MLPs, batch 256, lambda 0.1; images lambda 10 and
# batch 64; the language model n_critic 10. Adam lr 1e-4, betas (0.5, 0.9). Weight clipping follows
# Arjovsky et al. (2017): RMSprop lr 5e-5, c = 0.01.
DATASET_DEFAULTS = {
    "toy": dict(batch_size=256, weight=0.1, n_critic=5, width=512, depth=3, critic_depth=3, noise=2,
                steps=2000, eval_every=100, layernorm=False),
    "digits": dict(batch_size=64, weight=10.0, n_critic=5, width=64, depth=0, critic_depth=0, noise=64,
                   steps=2000, eval_every=200, layernorm=False),
    "text": dict(batch_size=64, weight=10.0, n_critic=10, width=128, depth=5, critic_depth=5, noise=128,
                 steps=2000, eval_every=100, layernorm=False),
}
COMMON_DEFAULTS = dict(lazy=1, device="cpu", backend="auto", amp=False, seed=0, dtype="float32",
                       compare_reference=False, text_file=None, log_every=10, checkpoint_every=500,
                       time_budget=None, dragan_scale=0.5, penalty_fraction=1.0)
# What may change when a run is resumed; everything else must match the checkpoint.
RESUMABLE = ("steps", "log_every", "eval_every", "checkpoint_every", "time_budget", "backend")

# The numeric options' ranges: integers (flag-named key: (minimum, maximum or None)) ...
INT_RANGES = dict(steps=(1, None), batch_size=(2, 2**31 - 1), n_critic=(1, None), lazy=(1, 1000),
                  log_every=(1, None), eval_every=(1, None), checkpoint_every=(1, None), width=(2, 65536),
                  depth=(1, 256), critic_depth=(1, 256), seed=(0, 2**64 - 1), noise=(1, 65536))
# ... and floats: finite, within these bounds.
MAX_LR = 1.0
MAX_WEIGHT = 1e6                             # the paper: 0.1 on the toy sets, 10 on images and text
# A complete config's keys and the types their values may have.
_INT, _REAL, _STR, _BOOL, _NONE = (int,), (numbers.Real,), (str,), (bool,), (type(None),)
CONFIG_TYPES = dict(
    dataset=_STR, regularizer=_STR, device=_STR, backend=_STR, dtype=_STR, optimizer=_STR, text_file=_STR + _NONE,
    amp=_BOOL, compare_reference=_BOOL, layernorm=_BOOL,
    lr=_REAL, dragan_scale=_REAL, weight=_REAL + _NONE, clip=_REAL + _NONE, time_budget=_REAL + _NONE,
    betas=(tuple, type(None)), **{k: _INT for k in INT_RANGES})


def dataset_group(name):
    return "toy" if name in TOY else name


def resolve(given):
    """A complete config from the options the user gave (a dict; None means 'use the default')."""
    given = {k: v for k, v in given.items() if v is not None}
    if "dataset" not in given:
        raise UsageError("--dataset is required (or --resume with an --out that holds a run)")
    given.setdefault("regularizer", "gp")
    if given.get("dataset") not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}")
    if given.get("regularizer") not in REGULARIZERS:
        raise UsageError(f"--regularizer must be one of {', '.join(REGULARIZERS)}")
    reg = given["regularizer"]
    config = dict(COMMON_DEFAULTS)
    config.update(DATASET_DEFAULTS[dataset_group(given["dataset"])])
    if reg == "clip":
        config.update(optimizer="rmsprop", lr=5e-5, betas=None, clip=0.01, weight=None)
    else:
        config.update(optimizer="adam", lr=1e-4, betas=(0.5, 0.9), clip=None)
        if reg == "none":
            config["weight"] = None
    config.update(given)
    if config.get("betas") is not None:
        config["betas"] = tuple(float(b) for b in config["betas"])
    check(config, given)
    return config


def check_types(config):
    """UsageError unless `config` (a dict, e.g. read from a checkpoint) has every key of a complete config with a
    value of the right type."""
    for key, types in CONFIG_TYPES.items():
        if key not in config:
            raise UsageError(f"--{key.replace('_', '-')} is missing")
        v = config[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise UsageError(f"--{key.replace('_', '-')} is {v!r} ({type(v).__name__})")
    betas = config["betas"]
    if betas is not None and not (len(betas) == 2 and all(isinstance(b, numbers.Real) for b in betas)):
        raise UsageError(f"--betas is {betas!r}")


def _number(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


def check(config, given):
    """Raise UsageError for a value out of range or an option that does not apply."""
    reg = config["regularizer"]
    if config["dataset"] not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}")
    if reg not in REGULARIZERS:
        raise UsageError(f"--regularizer must be one of {', '.join(REGULARIZERS)}")

    def integer(name, flag=None):
        flag = flag or "--" + name.replace("_", "-")
        lo, hi = INT_RANGES[name]
        v = config[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
            top = f"2^{hi.bit_length()} - 1" if hi is not None and hi > 10**6 and (hi + 1) & hi == 0 else hi
            within = f">= {lo}" if hi is None else f"in [{lo}, {top}]"
            raise UsageError(f"{flag} must be an integer {within}, got {v}")

    def real(name, lo, hi=math.inf, lo_open=True, hint=""):
        flag = "--" + name.replace("_", "-")
        v = config[name]
        ok = (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
              and (v > lo if lo_open else v >= lo) and v <= hi)
        if not ok:
            bounds = (f"{'>' if lo_open else '>='} {_number(lo)}" if hi == math.inf else
                      f"in {'(' if lo_open else '['}{_number(lo)}, {_number(hi)}]")
            raise UsageError(f"{flag} must be a finite number {bounds}, got {v}{hint}")

    for name in ("steps", "batch_size", "n_critic", "lazy", "log_every", "eval_every", "checkpoint_every",
                 "width", "seed", "noise"):
        integer(name)
    if dataset_group(config["dataset"]) != "digits":
        integer("depth")
    if config["dataset"] in TOY:
        integer("critic_depth")
    real("lr", 0, MAX_LR)
    f = config.get("penalty_fraction", 1.0)      # absent from the configs of older checkpoints
    if not (isinstance(f, numbers.Real) and not isinstance(f, bool) and 0 < f <= 1):
        raise UsageError(f"--penalty-fraction must lie in (0, 1], got {f}")
    if reg == "clip":
        for flag, key in (("--weight", "weight"), ("--betas", "betas")):
            if key in given:
                raise UsageError(f"{flag} does not apply to --regularizer clip (RMSprop, no penalty)")
        real("clip", 0)
    elif "clip" in given:
        raise UsageError(f"--clip applies to --regularizer clip only, not {reg}")
    if reg in ("clip", "none"):
        if config["lazy"] != 1:
            raise UsageError(f"--lazy applies to the penalties ({', '.join(PENALTIES)}), not {reg}")
        if config.get("penalty_fraction", 1.0) != 1:
            raise UsageError(f"--penalty-fraction applies to the penalties ({', '.join(PENALTIES)}), not {reg}")
        if config["compare_reference"]:
            raise UsageError(f"--compare-reference needs a penalty to compare ({', '.join(PENALTIES)}); "
                             f"{reg} has none")
    else:
        real("weight", 0, MAX_WEIGHT, lo_open=False,
             hint=" (the paper uses 0.1 on the toy sets, 10 on digits and text)")
        real("dragan_scale", 0)
    if config["betas"] is not None:
        b1, b2 = config["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise UsageError(f"--betas must both lie in [0, 1), got {b1} {b2}")
    if config["dtype"] not in ("float32", "float64"):
        raise UsageError(f"--dtype must be float32 or float64, got {config['dtype']}")
    if config["amp"] and config["dtype"] == "float64":
        raise UsageError("--amp runs float32 models in reduced precision; it does not combine with --dtype float64")
    if config["amp"] and config["compare_reference"]:
        raise UsageError("--compare-reference compares exact arithmetic; run it without --amp")
    if config["backend"] not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {config['backend']}")
    if config["text_file"] is not None and config["dataset"] != "text":
        raise UsageError("--text-file applies to --dataset text only")
    if config["time_budget"] is not None:
        real("time_budget", 0, hint=" (leave --time-budget out for no limit)")
    if config["layernorm"] and config["dataset"] != "digits":
        raise UsageError("--layernorm applies to the digits critic only")
    # The digits nets have a fixed depth and the text critic shares --depth with its generator: say so rather
    # than ignore the option.
    if "depth" in given and config["dataset"] == "digits":
        raise UsageError("--depth applies to the toy generator and the text nets, not to digits")
    if "critic_depth" in given and config["dataset"] not in TOY:
        raise UsageError("--critic-depth applies to the toy critic only (text: --depth sets both nets)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (and exit status 2), like the trainer's other usage errors."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def parser(prog="python -m gpkernels train"):
    p = _Parser(
        prog=prog,
        description="Train a WGAN with a chosen Lipschitz regulariser on a toy 2-D set, 8x8 digits or "
                    "character text, with gpkernels' fused penalty. Defaults follow Gulrajani et al. (2017) "
                    "per dataset; metrics go to RUN_DIR/metrics.jsonl, checkpoints to RUN_DIR/checkpoint.pt. "
                    "Under torchrun it trains with DistributedDataParallel.")
    a = p.add_argument
    a("--dataset", choices=DATASETS, help="required unless --resume")
    a("--regularizer", choices=REGULARIZERS,
      help="clip: weight clipping (WGAN); gp: WGAN-GP; lp: one-sided (WGAN-LP); r1: zero-centred on real "
           "samples; dragan: DRAGAN; fd: finite-difference slope penalty; none: unconstrained (default gp)")
    a("--lazy", type=int, help="compute the penalty every K critic steps with weight x K (default 1)")
    a("--penalty-fraction", type=float, metavar="F",
      help="take the penalty on a random ceil(F x batch) of the samples, 0 < F <= 1 (default 1)")
    a("--steps", type=int, help="generator steps (each after --n-critic critic steps; default 2000)")
    a("--batch-size", type=int, help="per process (toy 256, digits and text 64)")
    a("--n-critic", type=int, help="critic steps per generator step (5; text 10)")
    a("--lr", type=float, help="learning rate (Adam 1e-4; clip: RMSprop 5e-5)")
    a("--betas", type=float, nargs=2, metavar=("B1", "B2"), help="Adam betas (0.5 0.9)")
    a("--clip", type=float, help="weight-clipping bound c (0.01)")
    a("--weight", type=float, help="penalty weight lambda (toy 0.1, digits and text 10)")
    a("--width", type=int, help="hidden width (toy 512, digits 64, text 128)")
    a("--depth", type=int, help="hidden layers of the toy generator / residual blocks of the text nets")
    a("--critic-depth", type=int, help="hidden layers of the toy critic (3)")
    a("--layernorm", action="store_true", default=None, help="LayerNorm in the digits critic")
    a("--device", help="cpu (default), cuda or cuda:N")
    a("--backend", choices=BACKENDS, help="gpkernels backend of the penalty (auto)")
    a("--amp", action="store_true", default=None,
      help="mixed precision: float16 with a GradScaler on CUDA, bfloat16 on the CPU")
    a("--dtype", choices=("float32", "float64"), help="parameter and data dtype (float32)")
    a("--seed", type=int, help="seed of the initialisation, the batches and the penalty points (0)")
    a("--text-file", help="train the text GAN on this UTF-8 file instead of Python's own documentation")
    a("--out", metavar="RUN_DIR", help="run directory (default runs/DATASET-REGULARIZER-seedS)")
    a("--resume", action="store_true", help="continue the run saved in RUN_DIR (to --steps)")
    a("--overwrite", action="store_true", help="start afresh even if RUN_DIR holds a run")
    a("--compare-reference", action="store_true", default=None,
      help="train a copy with the plain-autograd penalty in lock-step and report the largest parameter "
           "difference")
    a("--log-every", type=int, help="steps between metrics.jsonl lines (10)")
    a("--eval-every", type=int, help="steps between sample-quality evaluations (toy/text 100, digits 200)")
    a("--checkpoint-every", type=int, help="steps between checkpoints (500; one is always written at the end)")
    a("--time-budget", type=float, metavar="SECONDS", help="stop once training has taken this long")
    a("--threads", type=int, help="torch.set_num_threads for CPU runs")
    a("--no-progress", action="store_true", help="no progress bar")
    return p


def given_from_args(args):
    """The config keys the user set on the command line (others None)."""
    keys = ("dataset", "regularizer", "lazy", "steps", "batch_size", "n_critic", "lr", "betas", "clip",
            "weight", "width", "depth", "critic_depth", "layernorm", "device", "backend", "amp", "dtype",
            "seed", "text_file", "compare_reference", "log_every", "eval_every", "checkpoint_every", "penalty_fraction",
            "time_budget")
    return {k: getattr(args, k) for k in keys}
