"""gpkernels.finite_difference_penalty: the exact slope of a linear critic, gradients equal to autograd of
the same formula written here, coincident points dropped safely, tuple inputs, low precision finite."""

import math

import pytest
import torch
from torch import nn

import gpkernels
from conftest import BACKEND_DEVICES, require

B = 6


def plain_fd(critic, real, fake, a1, a2, args=(), *, target=1.0, one_sided=False, weight=10.0):
    """The formula as the brief writes it: |D(x1) - D(x2)| / ||x1 - x2||, penalised towards target."""
    shape = (-1,) + (1,) * (real.dim() - 1)
    x1 = a1.reshape(shape) * real + (1 - a1.reshape(shape)) * fake
    x2 = a2.reshape(shape) * real + (1 - a2.reshape(shape)) * fake
    slopes = (critic(x1, *args).reshape(-1) - critic(x2, *args).reshape(-1)).abs() / (x1 - x2).flatten(1).norm(dim=1)
    d = slopes - target
    if one_sided:
        d = d.clamp(min=0)
    return weight * (d ** 2).mean(), slopes.detach()


class Critic(nn.Module):
    def __init__(self, labels=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
        self.embed = nn.Embedding(3, 5) if labels else None

    def forward(self, x, y=None):
        if self.embed is not None:
            x = x + self.embed(y)
        return self.net(x)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_linear_critic_has_its_exact_slope(backend, device):
    require(backend, device)
    w = torch.randn(5, dtype=torch.float64, device=device)
    critic = lambda x: x @ w + 3.0  # noqa: E731
    real = torch.randn(B, 5, dtype=torch.float64, device=device)
    fake = torch.randn(B, 5, dtype=torch.float64, device=device)
    loss, slopes = gpkernels.finite_difference_penalty(critic, real, fake, return_slopes=True, backend=backend)
    diff = real - fake
    exact = (diff @ w).abs() / diff.norm(dim=1)  # the directional derivative along the real-fake line
    torch.testing.assert_close(slopes, exact, rtol=1e-10, atol=0)
    torch.testing.assert_close(loss, 10 * ((exact - 1) ** 2).mean(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("target,one_sided", [(1.0, False), (1.0, True), (0.0, False), (0.3, True)])
@pytest.mark.parametrize("labels", [False, True], ids=["plain", "labels"])
def test_gradients_equal_autograd_of_the_formula(labels, target, one_sided, backend, device):
    require(backend, device)
    torch.manual_seed(0)
    critic = Critic(labels).double().to(device)
    real = torch.randn(B, 5, dtype=torch.float64, device=device)
    fake = torch.randn(B, 5, dtype=torch.float64, device=device)
    args = (torch.randint(0, 3, (B,), device=device),) if labels else ()
    a1, a2 = torch.rand(B, dtype=torch.float64, device=device), torch.rand(B, dtype=torch.float64, device=device)
    with torch.no_grad():  # slopes on both sides of the target, so the one-sided clamp is exercised
        median = plain_fd(critic, real, fake, a1, a2, args)[1].median()
        critic.net[2].weight.mul_((target or 1.0) / median)
    got = gpkernels.finite_difference_penalty(critic, real, fake, *args, alpha=(a1, a2), target=target,
                                              one_sided=one_sided, backend=backend)
    want, slopes = plain_fd(critic, real, fake, a1, a2, args, target=target, one_sided=one_sided)
    if one_sided:
        assert (slopes > target).any() and (slopes < target).any()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    params = list(critic.parameters())
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


def test_default_draws_come_from_the_generator_alpha_then_beta():
    torch.manual_seed(0)
    critic = Critic().double()
    real, fake = torch.randn(B, 5, dtype=torch.float64), torch.randn(B, 5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    a1, a2 = torch.rand(B, generator=gen, dtype=torch.float64), torch.rand(B, generator=gen, dtype=torch.float64)
    got = gpkernels.finite_difference_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, plain_fd(critic, real, fake, a1, a2)[0], rtol=1e-12, atol=0)


def test_coincident_points_are_dropped_not_divided_by_zero():
    torch.manual_seed(0)
    critic = Critic().double()
    real, fake = torch.randn(B, 5, dtype=torch.float64), torch.randn(B, 5, dtype=torch.float64)
    fake[0] = real[0]                   # real == fake: every point of the line is the same point
    a1 = torch.rand(B, dtype=torch.float64)
    a2 = a1.clone()
    a2[2:] = torch.rand(B - 2, dtype=torch.float64)  # samples 0 and 1: the same alpha twice
    a2[3] = a1[3] + 1e-6                # closer than min_gap (1e-3) of the real-fake distance
    loss, slopes = gpkernels.finite_difference_penalty(critic, real, fake, alpha=(a1, a2), return_slopes=True)
    assert torch.isnan(slopes[[0, 1, 3]]).all() and torch.isfinite(slopes[[2, 4, 5]]).all()
    keep = torch.tensor([2, 4, 5])
    want, _ = plain_fd(critic, real[keep], fake[keep], a1[keep], a2[keep])
    torch.testing.assert_close(loss, want * len(keep) / B, rtol=1e-12, atol=0)  # dropped pairs add 0 / B
    grads = torch.autograd.grad(loss, list(critic.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_all_pairs_dropped_gives_zero_with_zero_gradient():
    critic = Critic().double()
    real = torch.randn(B, 5, dtype=torch.float64)
    a = torch.rand(B, dtype=torch.float64)
    loss = gpkernels.finite_difference_penalty(critic, real, real.clone(), alpha=(a, a))
    assert loss.item() == 0.0
    assert all((g == 0).all() for g in torch.autograd.grad(loss, list(critic.parameters())))


def test_tuple_inputs_use_the_joint_distance():
    torch.manual_seed(0)
    lin = nn.Linear(7, 1).double()
    critic = lambda xs: lin(torch.cat([xs[0], xs[1].flatten(1)], 1))  # noqa: E731
    real = (torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 2, 2, dtype=torch.float64))
    fake = tuple(torch.randn_like(r) for r in real)
    _, slopes = gpkernels.finite_difference_penalty(critic, real, fake, return_slopes=True)
    diff = torch.cat([r.flatten(1) - f.flatten(1) for r, f in zip(real, fake)], 1)
    exact = (diff @ lin.weight[0]).abs() / diff.norm(dim=1)
    torch.testing.assert_close(slopes, exact.detach(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_is_finite_and_close_to_float64(dtype):
    torch.manual_seed(0)
    critic = Critic()
    real, fake = torch.randn(64, 5), torch.randn(64, 5) + 1
    a1, a2 = torch.rand(64), torch.rand(64)
    want = gpkernels.finite_difference_penalty(critic.double(), real.double(), fake.double(),
                                               alpha=(a1.double(), a2.double()), min_gap=0.1)
    got = gpkernels.finite_difference_penalty(critic.to(dtype), real.to(dtype), fake.to(dtype),
                                              alpha=(a1.to(dtype), a2.to(dtype)), min_gap=0.1)
    assert got.dtype == torch.float32 and math.isfinite(got.item())
    rel = {torch.float32: 1e-4, torch.float16: 0.05, torch.bfloat16: 0.2}[dtype]
    assert abs(got.item() - want.item()) <= rel * abs(want.item())


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(min_gap=1.0), ValueError, "min_gap must be < 1"),
    (dict(min_gap=-0.1), ValueError, "min_gap"),
    (dict(weight=-1.0), ValueError, "weight"),
    (dict(alpha=torch.rand(B)), TypeError, "pair"),
    (dict(one_sided="yes"), TypeError, "one_sided"),
])
def test_bad_arguments(kwargs, error, match):
    real, fake = torch.randn(B, 5), torch.randn(B, 5)
    with pytest.raises(error, match=match):
        gpkernels.finite_difference_penalty(Critic(), real, fake, **kwargs)


def test_fake_is_required():
    with pytest.raises(ValueError, match="real and fake are both required"):
        gpkernels.finite_difference_penalty(Critic(), torch.randn(B, 5), None)
