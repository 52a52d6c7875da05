"""`python -m gpkernels demo`: a short tour on the CPU (about a minute on 2 cores).

1. Correctness: the WGAN-GP penalty of a small MLP critic, computed by gpkernels and by the plain-autograd
   formula popular repositories copy (gpkernels.reference), gives the same value and the same critic
   gradients.
2. Training: a critic trained with gpkernels' penalty (lambda = 10) between
   8 Gaussians and a fixed noise distribution; the gradient norms at the interpolates settle near 1.
3. Speed: the penalty head (interpolate + penalty forward + backward) against the popular formula, and the
   whole penalty call on the paper's toy critic against plain autograd.
"""

import statistics
import time

import torch
from torch import nn

import gpkernels
from gpkernels import reference


# benchmarks/_critics.mlp_critic builds the same network at width 512, 3 layers; kept apart on purpose: the
# package cannot import the benchmarks folder.
def critic(width=128, hidden=2):
    """(B, 2) -> (B, 1): `hidden` ReLU layers of `width` units (the paper's toy critic is width 512, 3 layers)."""
    layers, d = [], 2
    for _ in range(hidden):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 1))


def eight_gaussians(n, generator):
    centers = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [0.7071, 0.7071], [0.7071, -0.7071],
                            [-0.7071, 0.7071], [-0.7071, -0.7071]]) * 2
    idx = torch.randint(0, 8, (n,), generator=generator)
    return centers[idx] + 0.02 * torch.randn(n, 2, generator=generator)


def plain_gradient_penalty(D, real, fake, alpha, weight):
    """(penalty, norms) by the formula most WGAN-GP repositories copy: gpkernels.reference's plain autograd."""
    return reference.gradient_penalty(D, real, fake, alpha=alpha, weight=weight, return_norms=True)


def gpkernels_gradient_penalty(D, real, fake, alpha, weight):
    """(penalty, norms) by gpkernels' fused penalty."""
    return gpkernels.gradient_penalty(D, real, fake, alpha=alpha, weight=weight, return_norms=True)


def check_correctness(gen):
    D = critic().double()
    real, fake = eight_gaussians(256, gen).double(), torch.randn(256, 2, generator=gen, dtype=torch.float64)
    alpha = torch.rand(256, generator=gen, dtype=torch.float64)
    ref, _ = plain_gradient_penalty(D, real, fake, alpha, 10.0)
    params = list(D.parameters())
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    ours, _ = gpkernels_gradient_penalty(D, real, fake, alpha, 10.0)
    our_grads = torch.autograd.grad(ours, params, allow_unused=True)
    # A parameter the penalty does not reach (the last bias; with gpkernels also the ReLU layers' biases,
    # whose penalty gradient is exactly zero) has no gradient: count it as zeros.
    zeros = [torch.zeros_like(p) for p in params]
    ref_grads = [z if g is None else g for g, z in zip(ref_grads, zeros)]
    our_grads = [z if g is None else g for g, z in zip(our_grads, zeros)]
    diff = max((a - b).abs().max().item() for a, b in zip(ref_grads, our_grads))
    print(f"  penalty (float64): plain autograd {ref.item():.12f}   gpkernels {ours.item():.12f}")
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
        if step == 1 or step % max(1, steps // 5) == 0:
            print(f"  step {step:5d}  critic W estimate {w_estimate.item():7.3f}  "
                  f"gradient norm at x-hat: mean {norms.mean().item():.3f}, std {norms.std().item():.3f}")


# Not benchmarks/_common.measure on purpose: the package cannot import the benchmarks folder, and this
# simpler round-robin sampler is enough for the demo's medians.
def time_interleaved(fns, repeats=30):
    """Median ms per call of each function, sampled round-robin so that background load hits all alike."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) * 1e3 for name, v in samples.items()}


def speed(gen):
    B, N = 256, 3072
    real, fake = torch.randn(B, N, generator=gen), torch.randn(B, N, generator=gen)
    g = torch.randn(B, N, generator=gen).requires_grad_()
    alpha = torch.rand(B, generator=gen)

    # The popular formula's head alone, on a given gradient g: what gpkernels.penalty replaces (the whole
    # penalty through a critic is gpkernels.reference's, timed below).
    def popular():
        a = alpha[:, None]
        _ = a * real + (1 - a) * fake
        gp = ((g.view(B, -1).norm(2, dim=1) - 1) ** 2).mean() * 10
        torch.autograd.grad(gp, g)

    def fused():
        gpkernels.interpolate(real, fake, alpha)
        torch.autograd.grad(gpkernels.penalty(g, weight=10.0), g)

    t = time_interleaved({"popular": popular, "fused": fused})
    backend = gpkernels.backends.choose(real.device)
    print(f"  head, B={B}, N={N}, fp32, {torch.get_num_threads()} thread(s), median of 30: popular formula "
          f"{t['popular']:.2f} ms, gpkernels ({backend}) {t['fused']:.2f} ms -> {t['popular'] / t['fused']:.1f}x")

    D = critic(512, 3)
    real, fake = eight_gaussians(256, gen), torch.randn(256, 2, generator=gen)

    def whole(penalty):
        def call():
            D.zero_grad(set_to_none=True)
            penalty(D, real, fake, torch.rand(256, generator=gen), 10.0)[0].backward()
        return call

    t = time_interleaved({"plain": whole(plain_gradient_penalty), "ours": whole(gpkernels_gradient_penalty)},
                         repeats=15)
    print(f"  whole penalty call incl. backward into the critic (toy MLP 2-512-512-512-1, B=256): plain autograd "
          f"{t['plain']:.1f} ms, gpkernels.gradient_penalty {t['ours']:.1f} ms -> {t['plain'] / t['ours']:.2f}x")


def main(steps=1000):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    print("gpkernels demo  (backends on this machine: " + ", ".join(gpkernels.available_backends()) + ")")
    print("1. correctness against the plain-autograd WGAN-GP penalty")
    check_correctness(gen)
    print(f"2. training a critic with the fused penalty ({steps} steps, lambda 10, Adam 1e-4 (0.5, 0.9), batch 256)")
    train(gen, steps)
    print("3. speed")
    speed(gen)
    return 0
