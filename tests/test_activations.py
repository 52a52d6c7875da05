"""gpkernels' rerouting of ReLU/LeakyReLU at the penalty points (gpkernels/_activations.py): the same values
and parameter gradients as plain autograd, bit for bit, and the dead second-order branch really gone."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpkernels
from gpkernels import _activations

ACTIVATIONS = {
    "nn.ReLU": lambda: nn.ReLU(),
    "nn.ReLU-inplace": lambda: nn.ReLU(inplace=True),
    "F.relu": lambda: F.relu,
    "torch.relu": lambda: torch.relu,
    "Tensor.relu": lambda: torch.Tensor.relu,
    "nn.LeakyReLU": lambda: nn.LeakyReLU(0.2),
    "nn.LeakyReLU-inplace": lambda: nn.LeakyReLU(0.2, inplace=True),
    "F.leaky_relu-kw": lambda: (lambda x: F.leaky_relu(x, negative_slope=0.1)),
    "F.leaky_relu-default": lambda: F.leaky_relu,
    "tanh": lambda: torch.tanh,
}


class Critic(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 16), nn.Linear(16, 16), nn.Linear(16, 1)
        self.act = act
        self.first_layer_backward_runs = 0
        self.watch = False

    def forward(self, x):
        pre = self.l1(x)
        if self.watch and pre.grad_fn is not None:
            pre.grad_fn.register_hook(self._count)
        return self.l3(self.act(self.l2(self.act(pre))))

    def _count(self, *_):
        self.first_layer_backward_runs += 1


def penalty_and_grads(critic, fast):
    torch.manual_seed(3)
    real, fake = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    alpha = torch.rand(8, dtype=torch.float64)
    loss = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fast_relu=fast)
    grads = torch.autograd.grad(loss, list(critic.parameters()), allow_unused=True)
    return loss, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, critic.parameters())]


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_same_penalty_and_gradients_bit_for_bit(name):
    torch.manual_seed(0)
    critic = Critic(ACTIVATIONS[name]()).double()
    slow, slow_grads = penalty_and_grads(critic, False)
    fast, fast_grads = penalty_and_grads(critic, True)
    assert torch.equal(fast, slow)
    for a, b in zip(fast_grads, slow_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,pruned", [("nn.ReLU", True), ("F.relu", True), ("torch.relu", True),
                                         ("Tensor.relu", True), ("nn.LeakyReLU", True),
                                         ("F.leaky_relu-kw", True), ("nn.ReLU-inplace", False),
                                         ("nn.LeakyReLU-inplace", False), ("tanh", False)])
def test_the_outer_backward_skips_the_forward_graph_exactly_when_rerouted(name, pruned):
    """With a piecewise-linear critic the outer backward reaches the forward graph of D(x_hat) only through
    autograd's materialised zeros; rerouted, it never gets there (tanh needs it: its curvature is real)."""
    torch.manual_seed(0)
    critic = Critic(ACTIVATIONS[name]()).double()
    critic.watch = True
    real, fake = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    for fast in (False, True):
        critic.first_layer_backward_runs = 0
        loss = gpkernels.gradient_penalty(critic, real, fake, fast_relu=fast)
        assert critic.first_layer_backward_runs == 1  # the inner autograd.grad goes through it once
        torch.autograd.grad(loss, list(critic.parameters()), allow_unused=True)
        outer = critic.first_layer_backward_runs - 1
        assert outer == (0 if fast and pruned else 1), f"fast={fast}: the outer backward ran it {outer} times"


def test_calls_that_do_not_qualify_pass_through():
    x = torch.randn(4, 3)  # no grad
    y = torch.randn(4, 3, requires_grad=True)
    with _activations.RoutePiecewiseLinear():
        assert torch.relu(x).grad_fn is None
        assert type(torch.relu(y).grad_fn).__name__ == "_PiecewiseLinearBackward"
        assert type(F.leaky_relu(y, 0.3).grad_fn).__name__ == "_PiecewiseLinearBackward"
        assert "LeakyRelu" in type(F.leaky_relu(y.clone(), 0.3, inplace=True).grad_fn).__name__
        assert type(torch.sigmoid(y).grad_fn).__name__ == "SigmoidBackward0"
    torch.testing.assert_close(F.leaky_relu(y, 0.3), _activations._PiecewiseLinear.apply(y, 0.3), rtol=0, atol=0)


def test_switched_off_for_compiled_critics():
    critic = Critic(nn.ReLU())
    assert _activations.usable(critic)
    assert not _activations.usable(torch.compile(critic))
