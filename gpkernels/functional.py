"""The fused ops' public functions: every input checked here, once, then the chosen backend's op.

    public function -> backends.select -> Backend.interpolate / penalty_terms -> op -> kernel
"""

import torch

from . import _checks, backends
from .reference import accum_dtype


def interpolate(real, fake, alpha=None, *, generator=None, backend=None):
    """Points on the lines between real and fake samples, one mixing weight per sample (WGAN-GP's x-hat).

        x_i = alpha_i * real_i + (1 - alpha_i) * fake_i

    Args:
        real: (B, *) float32/float64/float16/bfloat16, any layout (contiguous, channels_last, strided).
        fake: (B, *) same shape, dtype and device as real.
        alpha: (B,) or (B, 1, ..., 1) floating tensor on the same device, cast to real's dtype.
            None draws alpha ~ U[0, 1), one per sample, from `generator` (or torch's default generator).
        generator: a torch.Generator on real's device, used only when alpha is None.
        backend: None (the current default, see gpkernels.use_backend), "auto", or a registered backend
            name (gpkernels.backends.NAMES: "reference", "cpu", "cuda", "triton", ...).

    Returns:
        (B, *) tensor of real's dtype; real's layout when each of its samples is one contiguous block
        (contiguous, channels_last), else contiguous. Differentiable w.r.t. real, fake and alpha
        (twice and beyond).
    """
    where = "gpkernels.interpolate"
    _checks.samples(where, "real", real)
    _checks.same_as(where, "fake", fake, "real", real)
    B = real.shape[0]
    _checks.generator(where, generator, real.device)
    if alpha is None:
        draw = torch.float64 if real.dtype == torch.float64 else torch.float32
        alpha = torch.rand(B, generator=generator, device=real.device, dtype=draw).to(real.dtype)
    else:
        if not isinstance(alpha, torch.Tensor):
            raise TypeError(f"{where}: alpha must be a torch.Tensor or None, got {type(alpha).__name__}")
        if not alpha.is_floating_point():
            raise TypeError(f"{where}: alpha must be a floating tensor, got {alpha.dtype}")
        if alpha.dim() < 1 or alpha.shape[0] != B or alpha.numel() != B:
            raise ValueError(f"{where}: alpha must have shape ({B},) or ({B}, 1, ..., 1) (one weight per "
                             f"sample), got {tuple(alpha.shape)}")
        if alpha.device != real.device:
            raise ValueError(f"{where}: alpha is on {alpha.device} but real is on {real.device}")
        if alpha.dim() != 1:
            alpha = alpha.reshape(B)
        if alpha.dtype != real.dtype:
            alpha = alpha.to(real.dtype)
    return backends.select(where, backend, real.device).interpolate(real, fake, alpha)


def penalty(grads, *, target=1.0, one_sided=False, weight=1.0, exponent=2.0, reduction="mean", inv_scale=None,
            return_norms=False, backend=None):
    """The gradient penalty of per-sample gradients, norm over all non-batch dims.

        n_i = inv_scale * ||grads_i||              (all non-batch dims of sample i)
        d_i = n_i - target                         (one_sided: max(0, n_i - target))
        loss = weight * reduce_i(|d_i|^exponent)   (reduce: mean, sum, or none)

    target=1 is WGAN-GP (Gulrajani et al. 2017), one_sided=True with target=1 is WGAN-LP, target=0 the
    zero-centred R1/R2 form; target=0 with exponent=6 is W-div's ||g||^p (Wu et al. 2018). With AMP, pass the
    critic's gradient of the *scaled* output and its inverse scale: a float (unscaled inside the kernel), or,
    to avoid reading the scale on the host (a CUDA synchronisation per step, and no CUDA-graph capture), a
    one-element tensor on the gradients' device, e.g. `1 / scaler.scale(torch.ones((), device=dev))`.

    Args:
        grads: (B, *) float32/float64/float16/bfloat16, e.g. autograd.grad(D(x).sum(), x, create_graph=True).
        target: float >= 0.  one_sided: bool.  weight: float >= 0 (lambda; 10 in the paper).
        exponent: float >= 1 (p; 2 is the square). Where |d_i|^p has no finite derivative (p < 2 at d_i = 0,
            or at a zero gradient) the derivative is taken as 0; see csrc/common/penalty_math.h.
        reduction: "mean" | "sum" | "none".
        inv_scale: None (1), a float > 0, or a one-element floating tensor (on grads' device, or a CPU
            scalar): the gradients are then unscaled on the device in the accumulation dtype, never read on
            the host; its value is not checked (a GradScaler's scale is positive).
        return_norms: also return the per-sample norms n_i, detached, for logging.
        backend: None, "auto" or a registered backend name (gpkernels.backends.NAMES).

    Returns:
        loss: () for mean/sum, (B,) for none; float32 for float32/float16/bfloat16 grads, float64 for
        float64. Differentiable twice w.r.t. grads (so it trains the critic through a double backward).
        norms: (B,) same dtype, detached; only with return_norms=True.
    """
    where = "gpkernels.penalty"
    _checks.samples(where, "grads", grads)
    target = _checks.finite_number(where, "target", target)
    weight = _checks.finite_number(where, "weight", weight)
    exponent = _checks.finite_number(where, "exponent", exponent, minimum=1.0)
    if not isinstance(one_sided, bool):
        raise TypeError(f"{where}: one_sided must be a bool, got {type(one_sided).__name__}")
    _checks.reduction(where, reduction)
    if inv_scale is None:
        inv_scale = 1.0
    elif isinstance(inv_scale, torch.Tensor):
        if inv_scale.numel() != 1:
            raise ValueError(f"{where}: inv_scale must be a number or a one-element tensor, got shape "
                             f"{tuple(inv_scale.shape)}")
        if not inv_scale.is_floating_point():
            raise TypeError(f"{where}: inv_scale must be a floating tensor, got {inv_scale.dtype}")
        if inv_scale.device != grads.device and not (inv_scale.device.type == "cpu" and inv_scale.dim() == 0):
            raise ValueError(f"{where}: inv_scale is on {inv_scale.device} but grads are on {grads.device} "
                             f"(a CPU scale must be 0-d)")
        # Unscale on the device instead of reading the scale on the host: no stream synchronisation.
        acc = accum_dtype(grads.dtype)
        grads = grads.to(acc) * inv_scale.to(acc).reshape(())
        inv_scale = 1.0
    inv_scale = _checks.finite_number(where, "inv_scale", inv_scale, strict=True)
    _checks.representable(where, grads.dtype, target=target, weight=weight, inv_scale=inv_scale)
    values, norms = backends.select(where, backend, grads.device).penalty_terms(grads, target, one_sided, weight,
                                                                              inv_scale, exponent)
    if reduction == "mean":
        loss = values.mean()
    elif reduction == "sum":
        loss = values.sum()
    else:
        loss = values
    return (loss, norms.detach()) if return_norms else loss
