"""The gradient regularisers of a critic, one call each: WGAN-GP, WGAN-LP, R1, R2, DRAGAN, the
finite-difference penalty, and `GradientPenalty`, a module holding one configuration (with lazy
regularisation).

    gp = gpkernels.gradient_penalty(critic, real, fake)    # 10 * mean_i (||grad D(x_i)|| - 1)^2
    (critic_loss + gp).backward()                           # trains the critic through a double backward

Data path: validate -> draw the points (no autograd; the fused interpolation kernel) -> the critic ->
autograd.grad(create_graph=True) for the inner gradient -> the fused penalty op (norm, unscale, penalty,
and its two derivatives). The points are detached leaves: the penalty trains the critic only and never
back-propagates into `real` or `fake` (so never into the generator), as in the paper.
"""

import contextlib
import dataclasses
import functools
import inspect
import math
import numbers
import sys
import typing
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from . import _checks, _reroute, backends, functional
from .reference import accum_dtype, draw_alpha

SAMPLES = ("interpolate", "real", "fake", "dragan", "real_and_fake")
METHODS = ("gradient", "finite_difference")
DRAGAN_NOISES = ("uniform", "normal")


# ---------------------------------------------------------------------------------------------- checks

def _parts(where, name, x):
    """A tensor or a tuple/list of tensors -> (list of tensors, the container type or None)."""
    if isinstance(x, torch.Tensor):
        parts, kind = [x], None
    elif isinstance(x, (tuple, list)):
        if len(x) == 0:
            raise ValueError(f"{where}: {name} is an empty {type(x).__name__}; give a tensor or a "
                             f"non-empty tuple of tensors")
        parts, kind = list(x), type(x)
    else:
        raise TypeError(f"{where}: {name} must be a tensor or a tuple/list of tensors, got {type(x).__name__}")
    for j, p in enumerate(parts):
        label = name if kind is None else f"{name}[{j}]"
        _checks.samples(where, label, p)
        if j:
            first = f"{name}[0]"
            if p.shape[0] != parts[0].shape[0]:
                raise ValueError(f"{where}: {label} has batch size {p.shape[0]} but {first} has "
                                 f"{parts[0].shape[0]}")
            if p.device != parts[0].device:
                raise ValueError(f"{where}: {label} is on {p.device} but {first} is on {parts[0].device}")
            if p.dtype != parts[0].dtype:
                raise TypeError(f"{where}: {label} is {p.dtype} but {first} is {parts[0].dtype}; the parts "
                                f"of one input must share a dtype")
    return parts, kind


def _matching(where, real, real_kind, fake, fake_kind):
    """fake mirrors real: same structure, and each part the same shape, dtype and device."""
    if (real_kind is None) != (fake_kind is None) or len(fake) != len(real):
        raise ValueError(f"{where}: real and fake must have the same structure (a tensor each, or tuples "
                         f"of the same length); got {len(real)} part(s) and {len(fake)} part(s)")
    for j, (r, f) in enumerate(zip(real, fake)):
        suffix = "" if real_kind is None else f"[{j}]"
        _checks.same_as(where, "fake" + suffix, f, "real" + suffix, r)


def _flag(where, name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a bool, got {type(value).__name__}")
    return value


def _modules_of(critic, depth=0):
    """The nn.Modules a critic callable holds: itself, or what a functools.partial, a bound method or a
    closure (a lambda) refers to, two levels deep. Only used to name where a batch norm came from."""
    if isinstance(critic, nn.Module):
        return [critic]
    if depth > 2:
        return []
    found = []
    if isinstance(critic, functools.partial):
        for x in (critic.func, *critic.args, *critic.keywords.values()):
            found += _modules_of(x, depth + 1)
    elif inspect.ismethod(critic):
        found += _modules_of(critic.__self__, depth + 1)
    for cell in getattr(critic, "__closure__", None) or ():
        try:
            found += _modules_of(cell.cell_contents, depth + 1)
        except ValueError:      # an empty cell
            pass
    return found


def _check_coupling(where, critic, couplings, strict):
    """Warn (or, strict, raise) when the critic mixed the samples of its batch at the penalty points (batch
    norm with batch statistics, whatever object made the call): the per-sample gradient the penalty
    constrains is then not the gradient of a per-sample function."""
    if not couplings:
        return
    owners = {}
    for module in _modules_of(critic):
        for name, m in module.named_modules():
            for p in m.parameters(recurse=False):
                owners.setdefault(id(p), f"{name or '<critic>'} ({type(m).__name__})")
    seen = []
    for c in couplings:
        owner = owners.get(id(c.weight)) if c.weight is not None else None
        text = f"{c.op} in {owner}" if owner else f"{c.op} on a {c.shape} input"
        if text not in seen:
            seen.append(text)
    shown = "; ".join(seen[:3]) + (f"; and {len(seen) - 3} more" if len(seen) > 3 else "")
    message = (f"{where}: at the penalty points the critic ran {len(couplings)} call(s) that mix the samples of "
               f"its batch: {shown}. A batch norm with batch statistics (BatchNorm in training mode, "
               f"SyncBatchNorm) couples the samples, so the per-sample gradient norm the penalty constrains is "
               f"not that of a per-sample critic (Gulrajani et al. 2017, sec. 4). Use LayerNorm, GroupNorm or "
               f"InstanceNorm in the critic, or no normalisation.")
    if strict:
        raise ValueError(message + " (strict=True turns this warning into an error)")
    warnings.warn(message, UserWarning, stacklevel=5)


def _alpha_per_sample(where, name, alpha, batch):
    """alpha holds one mixing weight per sample: (B,) or (B, 1, ..., 1)."""
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a tensor of mixing weights, got {type(alpha).__name__}")
    if alpha.numel() != batch or (alpha.dim() and alpha.shape[0] != batch):
        hint = (f"; for one weight for the whole batch, as some scripts draw it, pass "
                f"{name}=eps.reshape(1).expand({batch})" if alpha.numel() == 1 else "")
        raise ValueError(f"{where}: {name} must hold one mixing weight per sample, shape ({batch},) or "
                         f"({batch}, 1, ..., 1); got {tuple(alpha.shape)}{hint}")


def _critic_fn(where, critic):
    if not torch.is_grad_enabled():
        raise RuntimeError(f"{where}: autograd is disabled here (torch.no_grad() or inference_mode); the "
                           f"penalty needs the critic's gradient, so call it with gradients enabled")
    if not callable(critic):
        raise TypeError(f"{where}: critic must be callable (an nn.Module or a function), got "
                        f"{type(critic).__name__}")


def _score(where, out, batch, score=None):
    """The critic's output -> its (B,) score. score=None: a (B,), (B, 1) or (B, 1, ..., 1) tensor, or a
    tuple/list whose first element is one; a key (a dict's, or an index) or a callable picks it otherwise."""
    if score is not None:
        if callable(score):
            out = score(out)
        else:
            try:
                out = out[score]
            except (KeyError, IndexError, TypeError):
                keys = f" (keys: {', '.join(map(repr, list(out)[:8]))})" if isinstance(out, Mapping) else ""
                raise ValueError(f"{where}: score={score!r} selects nothing from the critic's output, a "
                                 f"{type(out).__name__}{keys}") from None
    elif isinstance(out, Mapping):
        keys = ", ".join(map(repr, list(out)[:8]))
        raise TypeError(f"{where}: the critic returned a {type(out).__name__} (keys: {keys}); pass score=KEY (or "
                        f"a callable) to say which entry is the per-sample score")
    elif isinstance(out, (tuple, list)):
        if not out:
            raise ValueError(f"{where}: the critic returned an empty {type(out).__name__}")
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{where}: the critic must return a tensor of scores (or a tuple whose first element "
                        f"is one; score= picks from other outputs), got {type(out).__name__}")
    if not out.is_floating_point():
        raise TypeError(f"{where}: the critic's score must be a floating tensor, got {out.dtype}")
    if out.dim() == 0 or out.shape[0] != batch or out.numel() != batch:
        hint = " (did the critic already reduce over the batch?)" if out.dim() == 0 else ""
        raise ValueError(f"{where}: the critic must return one score per sample, shape ({batch},) or "
                         f"({batch}, 1); got {tuple(out.shape)}{hint}")
    return out.reshape(batch)


def _no_dependence(where):
    return RuntimeError(f"{where}: the critic's score does not depend on its input (autograd found no "
                        f"gradient), so there is nothing to penalise. Does the critic detach its input, run "
                        f"under torch.no_grad(), or ignore it?")


def _call(where, spec, call, points, kind, batch, couplings, *, second_order=False):
    """The (B,) score of critic(points, *critic_args, **critic_kwargs), read with spec.score.

    The call runs under `_reroute.PenaltyPoints`, which records in `couplings` every call that mixes the
    samples of the batch, and, for a gradient penalty (second_order) with fast_relu, reroutes the critic's
    piecewise-linear layers. A gradient penalty's call also runs eagerly where the critic, or part of it, is
    torch.compile'd (AOTAutograd has no double backward; the critic's other calls stay compiled).
    """
    inp = points[0] if kind is None else kind(points)
    with contextlib.ExitStack() as scope:
        if not torch.compiler.is_compiling():
            # Nothing can be compiled before torch._dynamo is imported; importing it costs a second.
            if second_order and "torch._dynamo" in sys.modules:
                scope.enter_context(torch.compiler.set_stance("force_eager"))
            watch = scope.enter_context(_reroute.PenaltyPoints(reroute=second_order and spec.fast_relu))
        else:
            watch = None
        try:
            out = call.critic(inp, *call.critic_args, **call.critic_kwargs)
        except TypeError as e:
            # A keyword the penalty took as its own option (weight=, target=, ...) that the critic needed.
            taken = [k for k in call.options_given if f"'{k}'" in str(e) and "argument" in str(e)]
            if taken:
                k = taken[0]
                raise TypeError(f"{where}: {k}= was taken as the penalty's {k}, but the critic needs an argument "
                                f"called {k!r} ({e}); pass the critic's as critic_kwargs={{{k!r}: ...}}") from e
            raise
    if watch is not None:
        couplings += watch.couplings
    return _score(where, out, batch, spec.score)


# ------------------------------------------------------------------------------------------ docstrings

GRADIENT_PENALTY_DOC = """The gradient penalty of a critic, ready to add to the critic loss.

        x_i   = where the penalty is taken (see `sample`), a detached leaf
        n_i   = ||grad_x D(x)_i||            (over all non-batch dims, of all inputs jointly)
        loss  = weight * mean_i |d_i|^exponent,   d_i = n_i - target   (one_sided: max(0, n_i - target))

    The defaults are WGAN-GP (Gulrajani et al. 2017): weight 10, target 1, exponent 2, one uniform weight
    per sample on the line between a real and a fake sample. The README's table maps every regulariser of
    the literature (WGAN-LP, R1/R2, DRAGAN, W-div, 0-GP) to arguments of this function or a shortcut.

    Args:
        critic: callable, `critic(x, *critic_args, **critic_kwargs)` -> scores of shape (B,), (B, 1) or
            (B, 1, ..., 1), or a tuple/list whose first element is that (see `score` for other outputs).
            A critic that computes batch statistics at the penalty points (BatchNorm in training mode,
            SyncBatchNorm; seen by what it runs, whatever wraps it) gets a warning (an error with
            strict=True). A DistributedDataParallel-wrapped critic works (see the README for the recipe).
        real: (B, *) float tensor, or a tuple/list of them (e.g. multi-scale images, each (B, *_j)) that
            share B, dtype and device; the critic then receives a container of the same type.
            May be None with sample="fake".
        fake: same structure, shapes, dtype and device as real; needed for "interpolate", "fake" and
            "real_and_fake".
        *critic_args: passed to the critic unchanged, positionally (class labels, conditioning).
        critic_kwargs: a dict of the critic's keyword arguments, passed unchanged; the other keywords that
            are not this function's own options go to the critic too. A keyword named like an option
            (weight, target, ...) is the penalty's: pass the critic's through critic_kwargs.
        weight: float >= 0 (lambda).  target: float >= 0 (1 for WGAN-GP, 0 for R1/R2/W-div/0-GP).
        one_sided: penalise only norms above target (WGAN-LP, Petzka et al. 2018).
        exponent: float >= 1, p in |d_i|^p (2; W-div: 6).
        sample: "interpolate" - x_i = a_i real_i + (1 - a_i) fake_i, a_i ~ U[0, 1) per sample (WGAN-GP);
            "real" - x = real (R1); "fake" - x = fake (R2);
            "dragan" - x_i = a_i p_i + (1 - a_i) real_i with p = real + dragan_scale * std(real) * u,
            u ~ U[0, 1) per element and std over the whole batch (per input of a tuple), as in
            Kodali et al. 2017's code; "real_and_fake" - the 2B points real and fake, one critic call each
            (W-div, Wu et al. 2018).
        alpha: (B,) mixing weights for "interpolate"/"dragan"; None draws them. Draw order, from
            `generator` (or torch's default generator): alpha first (float32, float64 for float64 input),
            then for "dragan" u of each input in turn.
        generator: torch.Generator on the inputs' device.  dragan_scale: float > 0 (C).
        dragan_correction: 0 (population std, the authors' code) or 1 (Bessel-corrected, torch.std's default).
        dragan_noise: "uniform" (U[0, 1), the authors' code) or "normal" (N(0, 1), the paper's text).
        scaler: a torch.amp.GradScaler for mixed precision. The inner gradient is taken of the scaled
            critic output and unscaled inside the fused kernel; an overflow makes the step's gradients
            non-finite so that the scaler skips the step. Use it with torch.autocast as usual:
            `scaler.scale(critic_loss + gp).backward()`.
        return_norms: also return the per-sample norms n_i (unscaled), detached, for logging.
        score: how to read the (B,) score from the critic's output: None (a tensor, or a tuple's first
            element), a key or index (`out[score]`, e.g. "adv_output" of a dict), or a callable
            (`score(out)`).
        strict: raise instead of warning about batch statistics in the critic.
        backend: None, "auto" or a registered backend name (gpkernels.backends.NAMES; see
            gpkernels.use_backend).
        fast_relu: at the penalty points, run the critic's ReLU/LeakyReLU/Hardtanh/ReLU6/PReLU calls (in
            place or not), its pools, reflect/replicate padding and convolutions without the second-order
            work that autograd does on zeros (its materialised zero derivatives make the outer backward push
            zeros through the critic's whole forward graph) and with a faster weight-gradient product in the
            convolutions' double backward; see gpkernels/_reroute.py for what is covered. Same values, same
            gradients (to rounding in the convolutions); a parameter whose penalty gradient is exactly zero
            gets None instead of zeros. A torch.compile'd critic (or part of one) runs eagerly at the
            penalty points, since AOTAutograd has no double backward.

    Returns:
        loss: () float32 (float64 for float64 input), differentiable w.r.t. the critic's parameters.
        norms: (B,) of the same dtype, only with return_norms=True.
    """

FINITE_DIFFERENCE_DOC = """A Lipschitz penalty with no double backward: the critic's slope between two points per
    sample.

        x1_i = a_i real_i + (1 - a_i) fake_i,   x2_i = b_i real_i + (1 - b_i) fake_i,   a, b ~ U[0, 1)
        slope_i = |D(x1)_i - D(x2)_i| / ||x1_i - x2_i||
        loss = weight / B * sum_{i kept} (slope_i - target)^2       (one_sided: max(0, slope_i - target))

    A pair is dropped from the sum (it contributes 0, and its gradient is 0) when its points are closer
    than min_gap times ||real_i - fake_i||, coincident points included.

    It costs two extra critic forwards and one ordinary backward instead of a forward and a double
    backward, works with ops that have no double backward, and needs no GradScaler handling. It is a
    weaker constraint: the slope along one chord bounds the gradient from below only (a chord's slope is
    the average of the directional derivative along it), so it constrains the critic only along real-fake
    lines and only on average between the two points; use it where the double backward is unavailable or
    too costly, and prefer gradient_penalty where it is not.

    Args:
        critic, real, fake, *critic_args, **critic_kwargs: as in `gradient_penalty` (real and fake may be
            tuples of tensors; the distance is taken over all parts jointly).
        weight: float >= 0.  target: float >= 0.  one_sided: bool.
        alpha: None, or a pair (a, b) of (B,) tensors. None draws a then b from `generator`.
        min_gap: float in [0, 1).  return_slopes: also return the (B,) slopes, detached, NaN where dropped.
        strict: raise instead of warning about BatchNorm.  backend: for the interpolation kernel.

    Returns:
        loss: () float32 (float64 for float64 input).  slopes: (B,), only with return_slopes=True.
    """


# ---------------------------------------------------------------------------------- the configuration

@dataclasses.dataclass(frozen=True)
class PenaltySpec:
    """One regulariser's configuration, checked once when it is made; `gradient_penalty`, its shortcuts,
    `finite_difference_penalty` and `GradientPenalty` all run one.

    Fields (see `gradient_penalty` for their meaning):
        weight: float >= 0 (lambda).  target: float >= 0.  one_sided: bool.
        sample: "interpolate" | "real" | "fake" | "dragan" | "real_and_fake".
        exponent: float >= 1 (p in |d|^p; 2 everywhere but W-div).
        dragan_scale: float > 0.  dragan_correction: 0 or 1 (std's Bessel correction).
        dragan_noise: "uniform" | "normal".
        method: "gradient" (the double-backward penalty) or "finite_difference" (sample "interpolate",
            exponent 2).
        min_gap: float in [0, 1), for "finite_difference".
        fraction: float in (0, 1]: take the penalty on a random subset of ceil(fraction * B) samples per call
            (unbiased for the full-batch mean; 1 takes all, with no draw).
        score: None, a key / index, or a callable: how to read the per-sample score from the critic's output.
        strict: raise instead of warning about batch-coupling layers.  backend: None or a backend name.
        fast_relu: reroute the critic's piecewise-linear layers at the penalty points.

    `dataclasses.replace(spec, weight=...)` makes a checked variant.
    """

    weight: float = 10.0
    target: float = 1.0
    one_sided: bool = False
    sample: str = "interpolate"
    _: dataclasses.KW_ONLY
    exponent: float = 2.0
    dragan_scale: float = 0.5
    dragan_correction: int = 0
    dragan_noise: str = "uniform"
    method: str = "gradient"
    min_gap: float = 1e-3
    score: typing.Any = None
    strict: bool = False
    backend: typing.Optional[str] = None
    fast_relu: bool = True
    fraction: float = 1.0
    where: dataclasses.InitVar[str] = "gpkernels.PenaltySpec"  # the function named in error messages

    def __post_init__(self, where):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("weight", _checks.finite_number(where, "weight", self.weight))
        put("target", _checks.finite_number(where, "target", self.target))
        put("exponent", _checks.finite_number(where, "exponent", self.exponent, minimum=1.0))
        put("dragan_scale", _checks.finite_number(where, "dragan_scale", self.dragan_scale, strict=True))
        if self.dragan_correction not in (0, 1) or isinstance(self.dragan_correction, (bool, float)):
            raise ValueError(f"{where}: dragan_correction must be 0 (population std, as the DRAGAN authors' code) "
                             f"or 1 (Bessel-corrected, torch.std's default), got {self.dragan_correction!r}")
        if self.dragan_noise not in DRAGAN_NOISES:
            raise ValueError(f"{where}: dragan_noise must be one of {', '.join(DRAGAN_NOISES)}; got "
                             f"{self.dragan_noise!r}")
        if not (self.score is None or isinstance(self.score, (str, int)) or callable(self.score)):
            raise TypeError(f"{where}: score must be None, a key (str or int) or a callable, got "
                            f"{type(self.score).__name__}")
        put("min_gap", _checks.finite_number(where, "min_gap", self.min_gap))
        put("fraction", _checks.finite_number(where, "fraction", self.fraction, minimum=0.0, strict=True))
        if self.fraction > 1:
            raise ValueError(f"{where}: fraction must be in (0, 1] (the share of the batch penalised), got "
                             f"{self.fraction}")
        if self.min_gap >= 1:
            raise ValueError(f"{where}: min_gap must be < 1 (a fraction of the real-fake distance), got "
                             f"{self.min_gap}")
        for name in ("one_sided", "strict", "fast_relu"):
            _flag(where, name, getattr(self, name))
        if self.sample not in SAMPLES:
            raise ValueError(f"{where}: sample must be one of {', '.join(SAMPLES)}; got {self.sample!r}")
        if self.method not in METHODS:
            raise ValueError(f"{where}: method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.method == "finite_difference" and self.sample != "interpolate":
            raise ValueError(f"{where}: method='finite_difference' takes its points on the real-fake line; "
                             f"sample must be 'interpolate', got {self.sample!r}")
        if self.method == "finite_difference" and self.exponent != 2:
            raise ValueError(f"{where}: method='finite_difference' squares the slope's excess; exponent must be 2, "
                             f"got {self.exponent}")
        if self.backend is not None:
            backends._check_name(self.backend, where)


# ---------------------------------------------------------------------------------------- the penalty

class _Inputs(typing.NamedTuple):
    """One call's data (as opposed to its configuration)."""
    critic: typing.Any
    real: typing.Any
    fake: typing.Any
    critic_args: tuple
    critic_kwargs: dict
    alpha: typing.Any = None
    generator: typing.Any = None
    scaler: typing.Any = None
    return_norms: bool = False
    options_given: tuple = ()      # the penalty options this call named by keyword (for a clear collision error)


_PARAMETER_NAMES = {}     # a critic's forward (or function) -> the names it takes by keyword


def _parameter_names(critic):
    """The keyword-capable parameter names of critic's forward (a module) or of the callable; empty when its
    signature is unknown or takes only *args/**kwargs (DataParallel, DDP)."""
    fn = critic.forward if isinstance(critic, nn.Module) else critic
    key = getattr(fn, "__func__", fn)
    try:
        return _PARAMETER_NAMES[key]
    except (KeyError, TypeError):
        pass
    try:
        params = inspect.signature(fn).parameters.values()
        names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    except (TypeError, ValueError):
        names = frozenset()
    if len(_PARAMETER_NAMES) < 256:
        try:
            _PARAMETER_NAMES[key] = names
        except TypeError:       # unhashable callable
            pass
    return names


def _options_not_the_critics(where, critic, given, critic_kwargs):
    """A keyword the penalty takes as its own option (weight=, target=, ...) must not be meant for the critic:
    a tensor value, or a critic that has an argument of that name while critic_kwargs= was not given, is
    ambiguous, and raises a TypeError that says how to tell them apart."""
    for k, _, v in given:
        if isinstance(v, torch.Tensor):
            raise TypeError(f"{where}: {k}= is a tensor, but the penalty's {k} is a number. If it is the critic's "
                            f"argument {k!r}, pass it as critic_kwargs={{{k!r}: ...}}")
    if critic_kwargs is not None:
        return
    clash = [k for k, _, _ in given if k in _parameter_names(critic)]
    if clash:
        k = clash[0]
        raise TypeError(f"{where}: {k}= is ambiguous: it is the penalty's {k} and the critic also takes an argument "
                        f"called {k!r}. Say which: critic_kwargs={{{k!r}: ...}} for the critic's (and {k}= for "
                        f"the penalty's), or critic_kwargs={{}} to leave the critic's default")


def _critic_kwargs(where, extra, mapping):
    """The critic's keyword arguments: the explicit critic_kwargs= mapping and the other keywords."""
    if mapping is None:
        return extra
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{where}: critic_kwargs must be a mapping (a dict of the critic's keyword arguments), "
                        f"got {type(mapping).__name__}")
    twice = sorted(set(extra) & set(mapping))
    if twice:
        raise TypeError(f"{where}: {', '.join(twice)} given both as a keyword and in critic_kwargs")
    return {**extra, **mapping}


def _run(where, spec, call):
    """Check the call against the spec, then compute: loss, or (loss, norms) with return_norms."""
    _critic_fn(where, call.critic)
    if call.generator is not None:
        given = call.real if call.real is not None else call.fake
        first = given[0] if isinstance(given, (tuple, list)) and given else given
        if isinstance(first, torch.Tensor):
            _checks.generator(where, call.generator, first.device)
    if spec.fraction < 1:
        call = _subset(where, spec, call)
    _flag(where, "return_norms" if spec.method == "gradient" else "return_slopes", call.return_norms)
    if spec.method == "finite_difference":
        return _finite_difference(where, spec, call)
    return _gradient_penalty(where, spec, call)


def _subset(where, spec, call):
    """The call on a uniform random subset of ceil(fraction * B) samples, drawn (torch.randperm) from the
    call's generator before anything else: the mean over the subset is an unbiased estimate of the mean over
    the batch. real, fake, alpha, and every critic argument that is a tensor with B rows, are indexed alike."""
    given = call.real if call.real is not None else call.fake
    parts, _ = _parts(where, "real" if call.real is not None else "fake", given)
    batch = parts[0].shape[0]
    keep = math.ceil(spec.fraction * batch)
    if keep >= batch:
        return call
    idx = torch.randperm(batch, generator=call.generator, device=parts[0].device)[:keep].sort().values

    def take(x):
        if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == batch:
            return x[idx]
        if isinstance(x, (tuple, list)):
            return type(x)(take(y) for y in x)
        return x

    alpha = call.alpha
    if isinstance(alpha, torch.Tensor):
        _alpha_per_sample(where, "alpha", alpha, batch)
        alpha = alpha.reshape(batch)[idx]
    elif isinstance(alpha, (tuple, list)):
        alpha = type(alpha)(a.reshape(batch)[idx] if isinstance(a, torch.Tensor) else a for a in alpha)
    return call._replace(real=take(call.real), fake=take(call.fake), alpha=alpha,
                         critic_args=tuple(take(a) for a in call.critic_args),
                         critic_kwargs={k: take(v) for k, v in call.critic_kwargs.items()})


def _gradient_penalty(where, spec, call):
    # gpkernels.reference.gradient_penalty / penalty_points compute the same thing in plain autograd for
    # single tensors: a deliberate second copy, the ground truth this one is compared with (demo, trainer,
    # benchmarks).
    sample, alpha, scaler = spec.sample, call.alpha, call.scaler
    if alpha is not None and sample in ("real", "fake", "real_and_fake"):
        raise ValueError(f"{where}: alpha is used only with sample='interpolate' or 'dragan', not {sample!r}")
    if scaler is not None and not all(hasattr(scaler, m) for m in ("scale", "get_scale", "is_enabled")):
        raise TypeError(f"{where}: scaler must be a torch.amp.GradScaler (or None), got {type(scaler).__name__}")

    need_real, need_fake = sample != "fake", sample in ("interpolate", "fake", "real_and_fake")
    r_parts = r_kind = f_parts = f_kind = None
    if call.real is not None:
        r_parts, r_kind = _parts(where, "real", call.real)
    elif need_real:
        raise ValueError(f"{where}: real is required for sample={sample!r}")
    if call.fake is not None:
        f_parts, f_kind = _parts(where, "fake", call.fake)
    elif need_fake:
        raise ValueError(f"{where}: fake is required for sample={sample!r}")
    if r_parts is not None and f_parts is not None:
        _matching(where, r_parts, r_kind, f_parts, f_kind)
    base, kind = (f_parts, f_kind) if sample == "fake" else (r_parts, r_kind)
    batch = base[0].shape[0]
    if alpha is not None:
        _alpha_per_sample(where, "alpha", alpha, batch)

    # The points, as fresh leaves: no autograd history into real/fake, and the caller's tensors untouched.
    # One set of points per critic call: two for "real_and_fake" (W-div), one otherwise.
    backend = spec.backend
    with torch.no_grad():
        if sample == "interpolate":
            a = draw_alpha(base[0], call.generator) if alpha is None else alpha
            sets = [[functional.interpolate(r, f, a, backend=backend) for r, f in zip(r_parts, f_parts)]]
        elif sample == "dragan":
            a = draw_alpha(base[0], call.generator) if alpha is None else alpha
            points = []
            for r in r_parts:
                draw = accum_dtype(r.dtype)
                noise = torch.rand if spec.dragan_noise == "uniform" else torch.randn
                u = noise(r.shape, generator=call.generator, device=r.device, dtype=draw)
                spread = spec.dragan_scale * r.to(draw).std(correction=spec.dragan_correction)
                perturbed = (r.to(draw) + spread * u).to(r.dtype)
                points.append(functional.interpolate(perturbed, r, a, backend=backend))
            sets = [points]
        else:
            # An inference-mode tensor cannot become a leaf that requires grad: copy it (rare, costs a copy).
            chosen = [r_parts, f_parts] if sample == "real_and_fake" else [base]
            sets = [[p.clone() if p.is_inference() else p for p in parts] for parts in chosen]
    sets = [[p.detach().requires_grad_(True) for p in points] for points in sets]

    couplings = []
    scores = [_call(where, spec, call, points, kind, batch, couplings, second_order=True) for points in sets]
    _check_coupling(where, call.critic, couplings, spec.strict)
    if not all(score.requires_grad for score in scores):
        raise _no_dependence(where)

    leaves = [p for points in sets for p in points]
    inv_scale = 1.0
    if scaler is not None and scaler.is_enabled():
        # Take the inner gradient of scale * mean_i D(x_i): per sample that is scale / B, the size the
        # critic loss's own scaled gradient has, so fp16 does not overflow sooner than in the rest of the
        # step. The gradients are unscaled by B / scale on the device (the scale tensor never read on the
        # host: no synchronisation, CUDA-graph capturable). A non-finite inner gradient makes the penalty
        # and its parameter gradients non-finite, so GradScaler skips the step as it would without us.
        inner = scaler.scale(sum(score.float().mean() for score in scores))
        inv_scale = batch / scaler.scale(torch.ones((), dtype=torch.float32, device=scores[0].device))
        grads = torch.autograd.grad(inner, leaves, create_graph=True, allow_unused=True)
    else:
        grads = torch.autograd.grad(scores, leaves, grad_outputs=[torch.ones_like(x) for x in scores],
                                    create_graph=True, allow_unused=True)
    if all(g is None for g in grads):
        raise _no_dependence(where)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]
    # Several inputs: one norm over all of them jointly; several sets of points: one row per point.
    n = len(sets[0])
    rows = [grads[i:i + n] for i in range(0, len(grads), n)]
    rows = [r[0] if n == 1 else torch.cat([x.reshape(batch, -1) for x in r], dim=1) for r in rows]
    g = rows[0] if len(rows) == 1 else torch.cat([r.reshape(batch, -1) for r in rows])
    loss, norms = functional.penalty(g, target=spec.target, one_sided=spec.one_sided, weight=spec.weight,
                                     exponent=spec.exponent, inv_scale=inv_scale, return_norms=True,
                                     backend=backend)
    return (loss, norms) if call.return_norms else loss


def _finite_difference(where, spec, call):
    # Deliberately mirrored by gpkernels.reference.finite_difference_penalty (the plain ground truth).
    if call.scaler is not None:
        raise ValueError(f"{where}: the finite-difference penalty takes no scaler (it has no inner gradient "
                         f"to unscale)")
    real, fake, alpha = call.real, call.fake, call.alpha
    if real is None or fake is None:
        raise ValueError(f"{where}: real and fake are both required")
    r_parts, kind = _parts(where, "real", real)
    f_parts, f_kind = _parts(where, "fake", fake)
    _matching(where, r_parts, kind, f_parts, f_kind)
    batch = r_parts[0].shape[0]
    if alpha is not None:
        if not (isinstance(alpha, (tuple, list)) and len(alpha) == 2):
            raise TypeError(f"{where}: alpha must be None or a pair (alpha1, alpha2) of (B,) tensors")

    acc = accum_dtype(r_parts[0].dtype)
    with torch.no_grad():
        if alpha is None:
            a1 = draw_alpha(r_parts[0], call.generator)
            a2 = draw_alpha(r_parts[0], call.generator)
        else:
            a1, a2 = alpha
            _alpha_per_sample(where, "alpha[0]", a1, batch)
            _alpha_per_sample(where, "alpha[1]", a2, batch)
        x1 = [functional.interpolate(r, f, a1, backend=spec.backend) for r, f in zip(r_parts, f_parts)]
        x2 = [functional.interpolate(r, f, a2, backend=spec.backend) for r, f in zip(r_parts, f_parts)]
        # Distances between the points actually fed to the critic, and between real and fake.
        dist = sum((p.to(acc) - q.to(acc)).reshape(batch, -1).square().sum(1) for p, q in zip(x1, x2)).sqrt()
        span = sum((r.to(acc) - f.to(acc)).reshape(batch, -1).square().sum(1)
                   for r, f in zip(r_parts, f_parts)).sqrt()
        # Pairs closer than min_gap of their real-fake distance (coincident points included) have no slope
        # worth trusting: rounding in D(x1) - D(x2) would be divided by almost nothing. They leave the sum.
        keep = (dist > spec.min_gap * span) & (dist > 0)
        safe = torch.where(keep, dist, torch.ones_like(dist))

    couplings = []
    d1 = _call(where, spec, call, x1, kind, batch, couplings)
    d2 = _call(where, spec, call, x2, kind, batch, couplings)
    _check_coupling(where, call.critic, couplings, spec.strict)
    slopes = (d1.to(acc) - d2.to(acc)).abs() / safe
    excess = slopes - spec.target
    if spec.one_sided:
        excess = excess.clamp_min(0)
    terms = torch.where(keep, excess.square(), torch.zeros_like(excess))
    loss = spec.weight * terms.sum() / batch
    if call.return_norms:
        shown = torch.where(keep, slopes.detach(), torch.full_like(slopes, math.nan))
        return loss, shown
    return loss


# ---------------------------------------------------------------------------------- public functions
# Each public function is a preset of PenaltySpec: some fields fixed, the others open as keyword arguments
# with the preset's defaults. `_preset` builds the function and its signature from one table, so that the
# parameters are spelled once (here) and checked once (PenaltySpec).

_P = inspect.Parameter
# The keyword arguments of the public functions, in their order in the signatures: spec fields, and the
# call's data (alpha, generator, scaler, return_norms / return_slopes, critic_kwargs).
_ORDER = ("weight", "target", "one_sided", "exponent", "sample", "alpha", "generator", "dragan_scale",
          "dragan_correction", "dragan_noise", "min_gap", "scaler", "return_norms", "return_slopes", "score",
          "critic_kwargs", "fraction", "strict", "backend", "fast_relu")


def _preset(name, data, options, fixed, doc):
    """A public penalty function.

    name: its name (gpkernels.<name> in messages).  data: the positional tensors after the critic, e.g.
    ("real", "fake"); a (name, default) pair makes one optional.  options: {keyword: default} of the open
    spec fields and call arguments, in signature order.  fixed: the spec fields the function pins.
    """
    where = f"gpkernels.{name}"
    params = [_P("critic", _P.POSITIONAL_OR_KEYWORD)]
    for item in data:
        if isinstance(item, tuple):
            params.append(_P(item[0], _P.POSITIONAL_OR_KEYWORD, default=item[1]))
        else:
            params.append(_P(item, _P.POSITIONAL_OR_KEYWORD))
    params.append(_P("critic_args", _P.VAR_POSITIONAL))
    params += [_P(k, _P.KEYWORD_ONLY, default=options[k]) for k in _ORDER if k in options]
    params.append(_P("more_critic_kwargs", _P.VAR_KEYWORD))
    signature = inspect.Signature(params)
    spec_fields = {f.name for f in dataclasses.fields(PenaltySpec)}
    defaults = PenaltySpec(**{k: v for k, v in options.items() if k in spec_fields}, **fixed, where=where)

    names = [p.name for p in params[:1 + len(data)]]      # critic and the data tensors
    named, keywords = frozenset(names), frozenset(options)
    spec_options = tuple(k for k in options if k in spec_fields)
    specs = {}                                             # checked specs by the fields a call gave

    def bind(args, kwargs):
        """{parameter: value} as signature.bind gives it; a fast path for the usual positional call."""
        if len(args) >= len(names) and named.isdisjoint(kwargs):
            a = dict(zip(names, args))
            a["critic_args"] = args[len(names):]
            a["more_critic_kwargs"] = passed = {}
            for k, v in kwargs.items():
                if k in keywords:
                    a[k] = v
                else:
                    passed[k] = v
            return a
        try:
            return signature.bind(*args, **kwargs).arguments
        except TypeError as e:      # a missing or surplus argument, named as Python names it
            raise TypeError(f"{where}: {e}") from None

    def penalty(*args, **kwargs):
        a = bind(args, kwargs)
        given = tuple((k, type(a[k]), a[k]) for k in spec_options if k in a)
        spec = defaults
        if given:
            _options_not_the_critics(where, a["critic"], given, a.get("critic_kwargs"))
            try:
                spec = specs[given]
            except (KeyError, TypeError):   # TypeError: an unhashable value, which the spec's check refuses
                spec = dataclasses.replace(defaults, **{k: v for k, _, v in given}, where=where)
                if len(specs) < 64:
                    specs[given] = spec
        critic_kwargs = _critic_kwargs(where, a.get("more_critic_kwargs", {}), a.get("critic_kwargs"))
        call = _Inputs(a["critic"], a.get("real"), a.get("fake"), a.get("critic_args", ()), critic_kwargs,
                       a.get("alpha"), a.get("generator"), a.get("scaler"),
                       a.get("return_norms", a.get("return_slopes", False)), tuple(k for k, _, _ in given))
        return _run(where, spec, call)

    penalty.__name__ = penalty.__qualname__ = name
    penalty.__module__ = "gpkernels"
    penalty.__signature__ = signature
    penalty.__doc__ = doc
    penalty.spec = defaults
    return penalty


_GRADIENT_OPTIONS = dict(scaler=None, return_norms=False, score=None, critic_kwargs=None, strict=False, backend=None,
                         fast_relu=True)
_DRAGAN_OPTIONS = dict(dragan_scale=0.5, dragan_correction=0, dragan_noise="uniform")

gradient_penalty = _preset(
    "gradient_penalty", ("real", ("fake", None)),
    dict(weight=10.0, target=1.0, one_sided=False, exponent=2.0, sample="interpolate", alpha=None, generator=None,
         **_DRAGAN_OPTIONS, fraction=1.0, **_GRADIENT_OPTIONS), {}, GRADIENT_PENALTY_DOC)

wgan_gp_penalty = _preset(
    "wgan_gp_penalty", ("real", "fake"), dict(weight=10.0, alpha=None, generator=None, **_GRADIENT_OPTIONS),
    dict(target=1.0, one_sided=False, sample="interpolate"),
    """WGAN-GP (Gulrajani et al. 2017): weight * mean_i (||grad D(x_i)|| - 1)^2 on real-fake interpolates.
    Shapes and arguments as in `gradient_penalty`.""")

lipschitz_penalty = _preset(
    "lipschitz_penalty", ("real", "fake"), dict(weight=10.0, alpha=None, generator=None, **_GRADIENT_OPTIONS),
    dict(target=1.0, one_sided=True, sample="interpolate"),
    """WGAN-LP (Petzka et al. 2018), the one-sided penalty: weight * mean_i max(0, ||grad D(x_i)|| - 1)^2
    on real-fake interpolates. Shapes and arguments as in `gradient_penalty`.""")

r1_penalty = _preset(
    "r1_penalty", ("real",), dict(weight=5.0, **_GRADIENT_OPTIONS), dict(target=0.0, sample="real"),
    """R1 (Mescheder et al. 2018): weight * mean_i ||grad D(real_i)||^2. The default weight 5 is gamma / 2
    with the paper's gamma = 10. real: (B, *) or a tuple of such; other arguments as in `gradient_penalty`.""")

r2_penalty = _preset(
    "r2_penalty", ("fake",), dict(weight=5.0, **_GRADIENT_OPTIONS), dict(target=0.0, sample="fake"),
    """R2 (Mescheder et al. 2018): weight * mean_i ||grad D(fake_i)||^2 (gamma / 2 = 5 by default).
    fake: (B, *) or a tuple of such; other arguments as in `gradient_penalty`.""")

dragan_penalty = _preset(
    "dragan_penalty", ("real",),
    dict(weight=10.0, alpha=None, generator=None, **_DRAGAN_OPTIONS, **_GRADIENT_OPTIONS),
    dict(target=1.0, one_sided=False, sample="dragan"),
    """DRAGAN (Kodali et al. 2017): weight * mean_i (||grad D(x_i)|| - 1)^2 at points x_i between real_i
    and a perturbed copy real_i + dragan_scale * std(real) * u_i, u ~ U[0, 1) per element (dragan_noise=
    "normal": N(0, 1), the paper's text), std over the whole batch without Bessel's correction as in the
    authors' code (dragan_correction=1: torch.std's default). Arguments as in `gradient_penalty` with
    sample="dragan".""")

wdiv_penalty = _preset(
    "wdiv_penalty", ("real", "fake"), dict(weight=2.0, exponent=6.0, **_GRADIENT_OPTIONS),
    dict(target=0.0, one_sided=False, sample="real_and_fake"),
    """W-div (Wu et al. 2018, Wasserstein divergence): weight * mean_i ||grad D(x_i)||^exponent over the 2B
    points x = real and fake (two critic calls, one norm per point), with the paper's k = 2 and p = 6. It
    equals the popular `k / 2 * mean(||grad D(real)||^p + ||grad D(fake)||^p)`. The critic loss it goes with
    is the usual mean D(fake) - mean D(real). real, fake: (B, *) or tuples; other arguments as in
    `gradient_penalty`.""")

finite_difference_penalty = _preset(
    "finite_difference_penalty", ("real", "fake"),
    dict(weight=10.0, target=1.0, one_sided=False, alpha=None, generator=None, min_gap=1e-3, return_slopes=False,
         score=None, critic_kwargs=None, strict=False, backend=None),
    dict(method="finite_difference"), FINITE_DIFFERENCE_DOC)


# ---------------------------------------------------------------------------------------------- module

class GradientPenalty(nn.Module):
    """One regulariser's configuration (a PenaltySpec), applied with `penalty(critic, real, fake, *critic_args)`.

    Lazy regularisation (Karras et al. 2020, StyleGAN2): with lazy=k the penalty is computed on every k-th
    call only (the 1st, (k+1)-th, ...) with its weight multiplied by k, and the calls in between return a
    zero without running the critic. `due` says whether the next call computes it. The call counter is
    saved in the module's state_dict, so a resumed run keeps the same schedule.

    Args:
        weight, target, one_sided, sample and, as keywords, method, dragan_scale, min_gap, strict, backend,
            fast_relu: the PenaltySpec fields (see `gradient_penalty`); or spec=PenaltySpec(...) instead.
        lazy: int >= 1.

    Call: `forward(critic, real, fake=None, *critic_args, alpha=None, generator=None, scaler=None,
    return_norms=False, **critic_kwargs)` -> loss () (and the (B,) norms or slopes, None on a skipped
    call). `last_norms` keeps the detached (B,) norms (slopes) of the last computed call. The spec's fields
    read as attributes (`penalty.weight`, `penalty.method`, ...).
    """

    def __init__(self, *args, lazy=1, spec=None, **fields):
        super().__init__()
        where = "gpkernels.GradientPenalty"
        if spec is not None:
            if args or fields:
                raise TypeError(f"{where}: give either spec= or the fields of one, not both")
            if not isinstance(spec, PenaltySpec):
                raise TypeError(f"{where}: spec must be a gpkernels.PenaltySpec, got {type(spec).__name__}")
        else:
            try:
                spec = PenaltySpec(*args, **fields, where=where)
            except TypeError as e:
                if "argument" not in str(e):
                    raise
                raise TypeError(f"{where}: {e}") from None
        if isinstance(lazy, bool) or not isinstance(lazy, numbers.Integral) or lazy < 1:
            raise ValueError(f"{where}: lazy must be an int >= 1, got {lazy!r}")
        self.spec = spec
        self.lazy = int(lazy)
        self.calls = 0
        self.last_norms = None

    @property
    def due(self):
        """Whether the next call computes the penalty (always, unless lazy > 1)."""
        return self.calls % self.lazy == 0

    def forward(self, critic, real, fake=None, *critic_args, alpha=None, generator=None, scaler=None,
                return_norms=False, critic_kwargs=None, **more_critic_kwargs):
        where = "gpkernels.GradientPenalty"
        if not self.due:
            given = real if real is not None else fake
            if given is None:
                raise ValueError(f"{where}: real (or fake, for sample='fake') is required")
            like = _parts(where, "real" if real is not None else "fake", given)[0][0]
            zero = torch.zeros((), dtype=accum_dtype(like.dtype), device=like.device)
            self.calls += 1
            return (zero, None) if return_norms else zero
        spec = self.spec if self.lazy == 1 else dataclasses.replace(self.spec, weight=self.spec.weight * self.lazy,
                                                                    where=where)
        call = _Inputs(critic, real, fake, critic_args, _critic_kwargs(where, more_critic_kwargs, critic_kwargs), alpha,
                       generator, scaler, True)
        loss, norms = _run(where, spec, call)
        # Counted once computed: a call that raised (a bad input, a failing critic) leaves the schedule as it
        # was, so the retried call is the due one.
        self.calls += 1
        self.last_norms = norms
        return (loss, norms) if return_norms else loss

    def get_extra_state(self):
        return {"calls": self.calls}

    def set_extra_state(self, state):
        self.calls = int(state["calls"])

    def extra_repr(self):
        text = (f"weight={self.weight}, target={self.target}, one_sided={self.one_sided}, "
                f"sample={self.sample!r}, method={self.method!r}, lazy={self.lazy}")
        if self.exponent != 2:
            text += f", exponent={self.exponent}"
        if self.fraction != 1:
            text += f", fraction={self.fraction}"
        return text + (f", backend={self.backend!r}" if self.backend is not None else "")


for _field in dataclasses.fields(PenaltySpec):
    setattr(GradientPenalty, _field.name, property(lambda self, _name=_field.name: getattr(self.spec, _name),
                                                    doc=f"The spec's {_field.name} (read-only)."))
del _field
