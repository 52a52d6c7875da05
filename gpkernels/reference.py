"""Pure-PyTorch reference implementations: the ground truth every fused backend is tested against, and the
plain-autograd penalty the demo, the trainer's --compare-reference and the benchmarks compare with.

They follow the papers' formulas directly and rely on autograd for every derivative (any order).
Conventions shared with the fused kernels (csrc/common/penalty_math.h): accumulation in float32 for
half/bfloat16/float32 input and float64 for float64 input; at a zero gradient the norm's derivative is 0;
with target 0 and exponent 2 the penalty is w * s^2 * ||g||^2, smooth everywhere; with another exponent p the
derivatives of w |d|^p are taken as 0 where d = 0 and at a zero gradient, as the kernels take them.
"""

import math

import torch


def accum_dtype(dtype):
    """float64 for float64, float32 for float32/float16/bfloat16."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample_view(alpha, like):
    """alpha (B,) reshaped to (B, 1, ..., 1) so it broadcasts over every non-batch dim of `like`."""
    return alpha.reshape((like.shape[0],) + (1,) * (like.dim() - 1))


def interpolate(real, fake, alpha):
    """x = alpha_i * real_i + (1 - alpha_i) * fake_i.

    real, fake: (B, *) same shape and dtype; alpha: (B,) in the same dtype. Returns (B, *).
    """
    a = per_sample_view(alpha, real)
    return a * real + (1 - a) * fake


def penalty_terms(grads, target, one_sided, weight, inv_scale, exponent=2.0):
    """Per-sample penalty terms and norms.

    grads: (B, *). Returns (values (B,), norms (B,)) in the accumulation dtype, with
    norms_i = inv_scale * ||grads_i|| over all non-batch dims and values_i = weight * |d_i|^exponent,
    d_i = norms_i - target (one-sided: max(0, d_i)).
    """
    g = grads.reshape(grads.shape[0], -1).to(accum_dtype(grads.dtype))
    lengths, rescued = _row_norms(g)
    norms = lengths * inv_scale
    if exponent == 2 and target == 0:
        # w s^2 ||g||^2 from the sum of squares: no square root in the graph, so smooth at a zero gradient. Rows
        # whose plain sum of squares under- or overflows sum (s g)^2 instead (finite wherever the value is).
        sumsq = (g * g).sum(dim=1)
        values = torch.where(rescued, weight * ((inv_scale * g) ** 2).sum(dim=1), weight * inv_scale**2 * sumsq)
        return values, norms.detach()
    if exponent != 2:
        return _power_terms(norms, target, one_sided, weight, exponent)
    d = norms - target
    if one_sided:
        d = d.clamp_min(0)
    return weight * d * d, norms.detach()


def _row_norms(g):
    """(||g_i||, rescued) for the rows of g (B, N), for every finite norm. A row whose plain sum of squares is
    not a normal number (0 or subnormal: its squares underflowed; inf: they overflowed) while the row is nonzero
    and finite is `rescued`: it is multiplied by 2^-e first, e the binary exponent of its largest |g| (an exact
    multiplication, undone after the square root), as the kernels rescue such rows (csrc/common/penalty_math.h,
    "Range"). Every other row is multiplied by 1: its results are the plain ones bit for bit. The derivative at
    a zero row is 0, not NaN: the square root is of a masked value; the mask is "nonzero", not "positive", so a
    NaN sum of squares stays NaN (GradScaler must see it).

    Autograd's chain through the rescaled sum is finite wherever the value is: for a row whose squares overflow
    (and so, with target != 0 or exponent != 2, whose value overflows), the derivatives may be inf or NaN here
    where the fused kernels' are finite."""
    with torch.no_grad():
        info = torch.finfo(g.dtype)
        sumsq = (g * g).sum(dim=1)
        top = g.abs().amax(dim=1) if g.shape[1] else sumsq
        rescued = ((sumsq < info.tiny) | (sumsq > info.max)) & (top > 0) & torch.isfinite(top)
        # 2^-e within the normal powers of two (float32: 2^-126 .. 2^127)
        lo, hi = math.frexp(info.tiny)[1] - 2, math.frexp(info.max)[1] - 2
        e = torch.frexp(top).exponent.clamp(lo, hi)
        scale = torch.where(rescued, torch.pow(2.0, -e.double()).to(g.dtype), torch.ones_like(sumsq))
    gs = g * scale[:, None]
    sumsq = (gs * gs).sum(dim=1)
    return _masked(sumsq, sumsq != 0, torch.sqrt) / scale, rescued


def _masked(x, keep, fn):
    """fn(x) where keep, else 0, with fn evaluated at 1 elsewhere: every derivative there is 0, never NaN."""
    return torch.where(keep, fn(torch.where(keep, x, torch.ones_like(x))), torch.zeros_like(x))


def _power_terms(norms, target, one_sided, weight, exponent):
    """penalty_terms for an exponent p != 2, from the norms. The kernels take the derivatives of w |d|^p as 0
    at a zero gradient and where d = 0 (where they are 0, or infinite for p < 2); so does this, through masks.
    The masks test "nonzero", not "positive", so that NaN stays NaN."""
    if target == 0:
        # w n^p (d = n), its derivatives 0 at a zero gradient.
        values = weight * _masked(norms, norms != 0, lambda x: x**exponent)
        return values, norms.detach()
    d = norms - target
    if one_sided:
        d = d.clamp_min(0)
    values = weight * _masked(d.abs(), d != 0, lambda x: x**exponent)
    return values, norms.detach()


# ------------------------------------------------------------------------------ the whole penalty
# The regularisers as a user writes them from the papers, in plain autograd: the ground truth of
# gpkernels.gradient_penalty and gpkernels.finite_difference_penalty for the demo, the trainer's
# --compare-reference and the benchmarks. They draw their random numbers in the fused functions'
# documented order, so that with a generator in the same state both penalise the same points.
# (The tests keep their own independent copies on purpose: a test should not share the code it checks.)

def draw_alpha(like, generator=None):
    """(B,) ~ U[0, 1) in the accumulation dtype of `like` (B, *), as gpkernels draws its mixing weights."""
    return torch.rand(like.shape[0], generator=generator, device=like.device, dtype=accum_dtype(like.dtype))


def _score(out, batch):
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(batch)


def penalty_points(real, fake, *, sample="interpolate", alpha=None, generator=None, dragan_scale=0.5,
                   dragan_correction=0, dragan_noise="uniform"):
    """Where the penalty is taken, (B, *), detached: sample "interpolate" (WGAN-GP), "real" (R1), "fake" (R2),
    "dragan" (between real and real + dragan_scale * std(real) * u, u ~ U[0, 1) per element, or N(0, 1) with
    dragan_noise="normal"; the std over the whole batch with Bessel's correction `dragan_correction`, 0 or 1),
    or "real_and_fake": the 2B points torch.cat([real, fake]) (W-div's sampling, Wu et al. 2018; no draws).
    alpha: (B,) or None (drawn first; then DRAGAN's u)."""
    if sample == "real":
        return real.detach()
    if sample == "fake":
        return fake.detach()
    if sample == "real_and_fake":
        if fake is None:
            raise ValueError("gpkernels.reference.penalty_points: sample 'real_and_fake' needs fake")
        return torch.cat([real.detach(), fake.detach()])
    base = real
    a = draw_alpha(base, generator) if alpha is None else alpha
    a = per_sample_view(a.to(base.dtype), base)
    with torch.no_grad():
        if sample == "interpolate":
            return a * real + (1 - a) * fake
        if sample == "dragan":
            acc = accum_dtype(real.dtype)
            noise = torch.rand if dragan_noise == "uniform" else torch.randn
            u = noise(real.shape, generator=generator, device=real.device, dtype=acc)
            wide = real.to(acc)
            perturbed = (wide + dragan_scale * wide.std(correction=dragan_correction) * u).to(real.dtype)
            return a * perturbed + (1 - a) * real
    raise ValueError(f"gpkernels.reference.penalty_points: unknown sample {sample!r}")


def gradient_penalty(critic, real, fake=None, *, weight=10.0, target=1.0, one_sided=False, sample="interpolate",
                     alpha=None, generator=None, dragan_scale=0.5, dragan_correction=0, dragan_noise="uniform",
                     return_norms=False, exponent=2.0):
    """weight * mean_i |d_i|^exponent with d_i = ||grad_x D(x)_i|| - target (one_sided: max(0, d_i)), at the
    points of `penalty_points`: WGAN-GP by default, WGAN-LP, R1/R2 (target 0), DRAGAN, and W-div (target 0,
    exponent 6, sample "real_and_fake": the mean over all 2B points, one critic call) by argument.

    critic: (B, *) -> (B,) or (B, 1) scores (or a tuple whose first element is that). real, fake: (B, *) tensors.
    Returns () in the accumulation dtype (and the per-point norms, (B,) or (2B,), detached, with
    return_norms=True).
    """
    x = penalty_points(real, fake, sample=sample, alpha=alpha, generator=generator, dragan_scale=dragan_scale,
                       dragan_correction=dragan_correction, dragan_noise=dragan_noise).requires_grad_(True)
    batch = x.shape[0]
    (g,) = torch.autograd.grad(_score(critic(x), batch).sum(), x, create_graph=True)
    g = g.reshape(batch, -1).to(accum_dtype(g.dtype))
    if target == 0:
        # ||g||^2 directly: the square of a norm has a NaN derivative at a zero gradient.
        sumsq = g.square().sum(dim=1)
        if exponent == 2:
            loss = weight * sumsq.mean()
        else:
            # ||g||^p = (sum g^2)^(p/2), its derivative taken as 0 at a zero gradient (there it is 0 for p > 2
            # and would be NaN for p < 2).
            loss = weight * _masked(sumsq, sumsq != 0, lambda x: x ** (exponent / 2)).mean()
        return (loss, sumsq.detach().sqrt()) if return_norms else loss
    norms = g.norm(2, dim=1)
    d = norms - target
    if one_sided:
        d = d.clamp_min(0)
    loss = weight * (d.square() if exponent == 2 else d.abs().pow(exponent)).mean()
    return (loss, norms.detach()) if return_norms else loss


def finite_difference_penalty(critic, real, fake, *, weight=10.0, target=1.0, one_sided=False, alpha=None,
                              generator=None, min_gap=1e-3):
    """weight / B * sum_i over kept pairs of (slope_i - target)^2 (one_sided: max(0, .)), slope_i =
    |D(x1)_i - D(x2)_i| / ||x1_i - x2_i|| at two points of the real-fake line; a pair closer than min_gap
    times ||real_i - fake_i|| is dropped. alpha: None (drawn: a then b) or a pair of (B,) tensors."""
    batch = real.shape[0]
    acc = accum_dtype(real.dtype)
    a1, a2 = (draw_alpha(real, generator), draw_alpha(real, generator)) if alpha is None else alpha
    x1 = penalty_points(real, fake, alpha=a1)
    x2 = penalty_points(real, fake, alpha=a2)
    dist = (x1.to(acc) - x2.to(acc)).reshape(batch, -1).norm(dim=1)
    span = (real.to(acc) - fake.to(acc)).reshape(batch, -1).norm(dim=1)
    keep = (dist > min_gap * span) & (dist > 0)
    d1, d2 = _score(critic(x1), batch), _score(critic(x2), batch)
    slopes = (d1.to(acc) - d2.to(acc)).abs() / torch.where(keep, dist, torch.ones_like(dist))
    excess = slopes - target
    if one_sided:
        excess = excess.clamp_min(0)
    return weight * torch.where(keep, excess.square(), torch.zeros_like(excess)).sum() / batch
