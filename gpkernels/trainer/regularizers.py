"""What each --regularizer asks of gpkernels: the GradientPenalty the trainer trains with (`penalty_settings`,
`fused_penalty`), and the plain-autograd penalty of the --compare-reference copy (`ReferencePenalty`, built on
gpkernels.reference from the same settings).

    clip, none   no penalty (clip clamps the critic's weights after each critic step instead: loop.py)
    gp           (||grad D(x)|| - 1)^2 at x between real and fake samples (WGAN-GP)
    lp           max(0, ||grad D(x)|| - 1)^2, one-sided (WGAN-LP)
    r1           ||grad D(x)||^2 at the real samples
    dragan       (||grad D(x)|| - 1)^2 between real samples and noisy copies of them (DRAGAN)
    fd           (|D(x1) - D(x2)| / ||x1 - x2|| - 1)^2 at two points of the real-fake line
"""

import math

import torch

import gpkernels
from gpkernels import backends, reference

from .config import UsageError


def penalty_settings(config):
    """GradientPenalty keyword arguments for a penalty regulariser (None for clip and none)."""
    reg = config["regularizer"]
    if reg in ("clip", "none"):
        return None
    kw = dict(weight=config["weight"], target=1.0, one_sided=False, sample="interpolate", method="gradient",
              lazy=config["lazy"], dragan_scale=config["dragan_scale"],
              fraction=config.get("penalty_fraction", 1.0))
    if reg == "lp":
        kw["one_sided"] = True
    elif reg == "r1":
        kw.update(target=0.0, sample="real")
    elif reg == "dragan":
        kw["sample"] = "dragan"
    elif reg == "fd":
        kw["method"] = "finite_difference"
    return kw


def fused_penalty(config, device):
    """The strict GradientPenalty of the config's regulariser on config["backend"] (None for clip and none).
    An explicit backend that cannot run on `device` is a UsageError naming its reasons."""
    kw = penalty_settings(config)
    if kw is None:
        return None
    backend = None if config["backend"] == backends.AUTO else config["backend"]
    if backend is not None:
        reasons = backends.refusals(backend, device)
        if reasons:
            raise UsageError(f"--backend {backend} cannot run on {device}: " + "; ".join(reasons))
    return gpkernels.GradientPenalty(**kw, strict=True, backend=backend)


class ReferencePenalty:
    """The config's penalty in plain autograd (gpkernels.reference), as the --compare-reference copy applies
    it: a callable (critic, real, fake, generator) -> () penalty, with real, fake: (B, *).

    gpkernels.reference draws its random numbers in the fused functions' documented order (alpha, then
    DRAGAN's noise; finite differences: alpha1 then alpha2), so that, given a generator in the same state,
    both penalise the same points. `weight` may be changed between calls; `calls` is checkpointed."""

    def __init__(self, config):
        kw = penalty_settings(config)
        self.weight, self.lazy, self.method = kw.pop("weight"), kw.pop("lazy"), kw.pop("method")
        self.fraction = kw.pop("fraction")
        if self.method == "finite_difference":
            self.penalty = reference.finite_difference_penalty
            kw = dict(target=kw["target"], one_sided=kw["one_sided"])
        else:
            self.penalty = reference.gradient_penalty
        self.kw = kw
        self.calls = 0

    def __call__(self, critic, real, fake, generator):
        # GradientPenalty's lazy schedule, deliberately restated: it is part of what the copy checks.
        due = self.calls % self.lazy == 0
        self.calls += 1
        if not due:
            return torch.zeros((), dtype=reference.accum_dtype(real.dtype), device=real.device)
        if self.fraction < 1:
            # GradientPenalty's subset, deliberately restated: drawn first from the same generator.
            keep = math.ceil(self.fraction * real.shape[0])
            if keep < real.shape[0]:
                idx = torch.randperm(real.shape[0], generator=generator, device=real.device)[:keep].sort().values
                real, fake = real[idx], fake[idx]
        return self.penalty(critic, real, fake, weight=self.weight * self.lazy, generator=generator, **self.kw)
