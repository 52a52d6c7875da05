"""The subsampled penalty (fraction=f): a uniform random subset of ceil(f B) samples per call, drawn from the
penalty's generator; unbiased for the full-batch penalty and its gradient; f = 1 is today's call bit for bit."""

import math

import pytest
import torch
from torch import nn

import gpkernels

B = 12


def setup(seed=0):
    torch.manual_seed(seed)
    critic = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    gen = torch.Generator().manual_seed(5)
    real = torch.randn(B, 3, generator=gen, dtype=torch.float64)
    fake = torch.randn(B, 3, generator=gen, dtype=torch.float64) + 0.5
    alpha = torch.rand(B, generator=gen, dtype=torch.float64)
    return critic, real, fake, alpha


def grads_of(critic, loss):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(critic.parameters())[:-1])])


def test_fraction_one_is_the_full_call_bit_for_bit_and_draws_nothing():
    critic, real, fake, _ = setup()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    full = gpkernels.GradientPenalty()(critic, real, fake, generator=g1)
    same = gpkernels.GradientPenalty(fraction=1.0)(critic, real, fake, generator=g2)
    assert torch.equal(full, same) and torch.equal(g1.get_state(), g2.get_state())


def test_subset_size_and_per_sample_critic_arguments():
    critic, real, fake, alpha = setup()
    seen = []

    def conditional(x, labels, *, scale):
        seen.append((x.shape[0], labels.shape[0], scale.shape[0]))
        return critic(x).squeeze(1) * scale + labels

    labels, scale = torch.arange(B, dtype=torch.float64), torch.ones(B, dtype=torch.float64)
    gp = gpkernels.GradientPenalty(fraction=0.25)
    loss, norms = gp(conditional, real, fake, labels, alpha=alpha, critic_kwargs={"scale": scale}, return_norms=True)
    assert seen == [(3, 3, 3)] and norms.shape == (3,)            # ceil(0.25 * 12) = 3
    # The same generator state picks the same subset: a resumed run is bit-exact.
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fraction=0.5, generator=g1)
    b = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fraction=0.5, generator=g2)
    assert torch.equal(a, b)


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_unbiased_for_the_full_batch_penalty_and_its_gradient(fraction):
    """With the points fixed (alpha given), the mean over draws of the subset penalty and of its gradient
    equals the full-batch ones, within 4 standard errors computed from the draws."""
    critic, real, fake, alpha = setup()
    full = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)
    full_grad = grads_of(critic, full)
    gen = torch.Generator().manual_seed(2)
    draws, grad_draws = [], []
    for _ in range(400):
        loss = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fraction=fraction, generator=gen)
        draws.append(loss.detach())
        grad_draws.append(grads_of(critic, loss))
    draws, grad_draws = torch.stack(draws), torch.stack(grad_draws)
    se = draws.std() / math.sqrt(len(draws))
    assert (draws.mean() - full).abs() <= 4 * se
    gse = grad_draws.std(0) / math.sqrt(len(draws))
    assert ((grad_draws.mean(0) - full_grad).abs() <= 4 * gse + 1e-12).all()
    # And it is not the full penalty every time (it is a real subsample).
    assert draws.std() > 0


@pytest.mark.parametrize("value,error", [(0.0, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                         ("half", TypeError)])
def test_bad_fractions_raise(value, error):
    with pytest.raises(error, match="fraction"):
        gpkernels.GradientPenalty(fraction=value)
    critic, real, fake, _ = setup()
    with pytest.raises(error, match="gpkernels.gradient_penalty: fraction"):
        gpkernels.gradient_penalty(critic, real, fake, fraction=value)
