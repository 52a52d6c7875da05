"""`python -m gpkernels demo`: a short tour on the CPU (about a minute on 2 cores).

1. Correctness: the WGAN-GP penalty of a small MLP critic, computed by gpkernels and by the ten-line
   autograd formula popular repositories copy, gives the same value and the same critic gradients.
2. Training: a critic trained with gpkernels' penalty (lambda = 10) between
   8 Gaussians and a fixed noise distribution; the gradient norms at the interpolates settle near 1.
3. Speed: the penalty head (interpolate + penalty forward + backward) against the popular formula.
"""

import statistics
import time

import torch
from torch import nn

import gpkernels


def critic(width=128):
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


def eight_gaussians(n, generator):
    centers = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [0.7071, 0.7071], [0.7071, -0.7071],
                            [-0.7071, 0.7071], [-0.7071, -0.7071]]) * 2
    idx = torch.randint(0, 8, (n,), generator=generator)
    return centers[idx] + 0.02 * torch.randn(n, 2, generator=generator)


def popular_gradient_penalty(D, real, fake, alpha, weight):
    """The formula most WGAN-GP repositories copy."""
    x = (alpha[:, None] * real + (1 - alpha[:, None]) * fake).requires_grad_(True)
    out = D(x)
    grads = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)[0]
    return ((grads.view(grads.size(0), -1).norm(2, dim=1) - 1) ** 2).mean() * weight


def gpkernels_gradient_penalty(D, real, fake, alpha, weight):
    return gpkernels.gradient_penalty(D, real, fake, alpha=alpha, weight=weight, return_norms=True)


def check_correctness(gen):
    D = critic().double()
    real, fake = eight_gaussians(256, gen).double(), torch.randn(256, 2, generator=gen, dtype=torch.float64)
    alpha = torch.rand(256, generator=gen, dtype=torch.float64)
    ref = popular_gradient_penalty(D, real, fake, alpha, 10.0)
    params = list(D.parameters())  # the last bias does not reach the penalty: its gradient is None
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    ours, _ = gpkernels_gradient_penalty(D, real, fake, alpha, 10.0)
    our_grads = torch.autograd.grad(ours, params, allow_unused=True)
    diff = max((a - b).abs().max().item() for a, b in zip(ref_grads, our_grads) if a is not None)
    if [a is None for a in ref_grads] != [b is None for b in our_grads]:
        raise SystemExit("demo: gpkernels and the plain-autograd penalty reach different parameters")
    print(f"  penalty (float64): popular formula {ref.item():.12f}   gpkernels {ours.item():.12f}")
    print(f"  largest difference over all critic parameter gradients: {diff:.2e}")
    if diff > 1e-9 or abs(ref.item() - ours.item()) > 1e-9:
        raise SystemExit("demo: gpkernels disagrees with the plain-autograd penalty")


def train(gen, steps):
    D = critic()
    opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.5, 0.9))
    for step in range(1, steps + 1):
        real, fake = eight_gaussians(256, gen), torch.randn(256, 2, generator=gen) * 0.5
        gp, norms = gpkernels_gradient_penalty(D, real, fake, torch.rand(256, generator=gen), 10.0)
        w_estimate = D(real).mean() - D(fake).mean()
        loss = -w_estimate + gp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 1 or step % (steps // 5) == 0:
            print(f"  step {step:5d}  critic W estimate {w_estimate.item():7.3f}  "
                  f"gradient norm at x-hat: mean {norms.mean().item():.3f}, std {norms.std().item():.3f}")


def time_head(fn, repeats=30):
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def speed(gen):
    B, N = 256, 3072
    real, fake = torch.randn(B, N, generator=gen), torch.randn(B, N, generator=gen)
    g = torch.randn(B, N, generator=gen).requires_grad_()
    alpha = torch.rand(B, generator=gen)

    def popular():
        a = alpha[:, None]
        _ = a * real + (1 - a) * fake
        gp = ((g.view(B, -1).norm(2, dim=1) - 1) ** 2).mean() * 10
        torch.autograd.grad(gp, g)

    def fused():
        gpkernels.interpolate(real, fake, alpha)
        torch.autograd.grad(gpkernels.penalty(g, weight=10.0), g)

    t_pop, t_ours = time_head(popular), time_head(fused)
    print(f"  B={B}, N={N}, fp32, {torch.get_num_threads()} thread(s), median of 30: popular formula "
          f"{t_pop:.2f} ms, gpkernels ({gpkernels.backends.select('demo', None, real.device)}) {t_ours:.2f} ms "
          f"-> {t_pop / t_ours:.1f}x")


def main(steps=1000):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    print("gpkernels demo  (backends on this machine: " + ", ".join(gpkernels.available_backends()) + ")")
    print("1. correctness against the plain-autograd WGAN-GP penalty")
    check_correctness(gen)
    print(f"2. training a critic with the fused penalty ({steps} steps, lambda 10, Adam 1e-4 (0.5, 0.9), batch 256)")
    train(gen, steps)
    print("3. speed of the penalty head")
    speed(gen)
    return 0
