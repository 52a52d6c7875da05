"""Pure-PyTorch reference implementations: the ground truth every fused backend is tested against.

They follow the paper's formulas directly and rely on autograd for every derivative (any order).
Conventions shared with the fused kernels (csrc/common/penalty_math.h): accumulation in float32 for
half/bfloat16/float32 input and float64 for float64 input; at a zero gradient the norm's derivative is 0;
with target 0 the penalty is w * s^2 * ||g||^2, smooth everywhere.
"""

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


def penalty_terms(grads, target, one_sided, weight, inv_scale):
    """Per-sample penalty terms and norms.

    grads: (B, *). Returns (values (B,), norms (B,)) in the accumulation dtype, with
    norms_i = inv_scale * ||grads_i|| over all non-batch dims and values_i = weight * d_i^2,
    d_i = norms_i - target (one-sided: max(0, d_i)).
    """
    g = grads.reshape(grads.shape[0], -1).to(accum_dtype(grads.dtype))
    sumsq = (g * g).sum(dim=1)
    if target == 0:
        values = weight * inv_scale**2 * sumsq
        norms = inv_scale * sumsq.sqrt()
        return values, norms.detach()
    # sqrt of a masked value so that the derivative at a zero gradient is 0, not NaN. The mask is
    # "nonzero", not "positive", so a NaN sum of squares stays NaN (GradScaler must see it).
    nonzero = sumsq != 0
    norms = torch.where(nonzero, torch.where(nonzero, sumsq, torch.ones_like(sumsq)).sqrt(),
                        torch.zeros_like(sumsq)) * inv_scale
    d = norms - target
    if one_sided:
        d = d.clamp_min(0)
    return weight * d * d, norms.detach()
