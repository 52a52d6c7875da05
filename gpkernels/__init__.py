"""gpkernels: fused CPU/CUDA/Triton kernels for the gradient penalty of WGAN-GP and its relatives.

    gp = gpkernels.gradient_penalty(critic, real, fake)             # WGAN-GP, lambda = 10
    (critic_loss + gp).backward()

The building blocks, for a hand-written penalty:

    import gpkernels
    x_hat = gpkernels.interpolate(real, fake).requires_grad_()     # one U[0,1) weight per sample
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    gp = gpkernels.penalty(g, weight=10.0)                          # 10 * mean_i (||g_i|| - 1)^2
"""

import torch  # noqa: F401  (the extension needs torch loaded first)

from . import backends  # noqa: F401  (loads the extension, registers the backends and their ops)
from .backends import available_backends, backend_report, current_backend, use_backend
from .flops import FlopCount
from .functional import interpolate, penalty
from .penalties import (GradientPenalty, PenaltySpec, dragan_penalty, finite_difference_penalty, gradient_penalty,
                        lipschitz_penalty, r1_penalty, r2_penalty, wdiv_penalty, wgan_gp_penalty)

__version__ = "0.1.0"

__all__ = [
    "gradient_penalty",
    "wgan_gp_penalty",
    "lipschitz_penalty",
    "r1_penalty",
    "r2_penalty",
    "dragan_penalty",
    "wdiv_penalty",
    "finite_difference_penalty",
    "GradientPenalty",
    "PenaltySpec",
    "interpolate",
    "penalty",
    "available_backends",
    "backend_report",
    "current_backend",
    "use_backend",
    "FlopCount",
    "__version__",
]
