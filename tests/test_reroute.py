"""gpkernels' rerouted critic ops at the penalty points (gpkernels/_reroute.py): the same values and parameter
gradients as plain autograd, the zero work really gone (FLOPs counted with gpkernels.FlopCount), in-place
semantics kept, and compiled critics."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import gpkernels
from gpkernels import _reroute

B = 6
CLASSES = 3


def plain_penalty(critic, real, fake, alpha, *args):
    """The paper's penalty in plain autograd, written independently of gpkernels."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x = (a * real + (1 - a) * fake).requires_grad_(True)
    out = critic(x, *args)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return 10.0 * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def param_grads(critic, loss):
    grads = torch.autograd.grad(loss, list(critic.parameters()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, critic.parameters())]


def inputs(shape, dtype=torch.float64, seed=3):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(B, *shape, generator=gen, dtype=dtype)
    fake = torch.randn(B, *shape, generator=gen, dtype=dtype)
    alpha = torch.rand(B, generator=gen, dtype=dtype)
    return real, fake, alpha


def assert_matches_autograd(critic, shape, *args, exact=False):
    """gpkernels' penalty and every parameter gradient equal plain autograd's: bit for bit (exact) or to
    1e-12 relative per tensor in float64."""
    real, fake, alpha = inputs(shape)
    want = plain_penalty(critic, real, fake, alpha, *args)
    want_grads = param_grads(critic, want)
    got = gpkernels.gradient_penalty(critic, real, fake, *args, alpha=alpha, backend="reference")
    got_grads = param_grads(critic, got)
    assert want.item() > 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for (name, _), g, w in zip(critic.named_parameters(), got_grads, want_grads):
        if exact:
            assert torch.equal(g, w), name
        else:
            err = ((g - w).abs().max() / w.abs().max().clamp_min(1e-300)).item()
            assert err <= 1e-12, f"{name}: relative error {err:.3g}"


# ---------------------------------------------------------------------------------------------- critics

class ConvCritic(nn.Module):
    """DCGAN-style: stride-2 convolutions and LeakyReLU(0.2), as public WGAN-GP code writes them."""

    def __init__(self, inplace=False, act=None):
        super().__init__()
        make = act or (lambda channels: nn.LeakyReLU(0.2, inplace=inplace))
        self.net = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), make(8), nn.Conv2d(8, 16, 4, 2, 1), make(16),
                                 nn.Conv2d(16, 1, 4, 1, 0))

    def forward(self, x):
        return self.net(x).view(-1)


class MLPCritic(nn.Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(inplace), nn.Linear(32, 32), nn.ReLU(inplace),
                                 nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).view(-1)


class Block(nn.Module):
    def __init__(self, c, inplace):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.inplace = inplace

    def forward(self, x):
        # The first activation reads the skip branch, so it is out of place either way.
        h = self.c1(F.relu(x))
        return x + self.c2(F.relu(h, inplace=self.inplace))


class ResNetCritic(nn.Module):
    """Residual blocks, average pooling and a global mean, no normalisation (SNGAN/WGAN-GP style)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.b1, self.b2 = Block(8, inplace), Block(8, inplace)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        h = F.avg_pool2d(self.b1(self.stem(x)), 2)
        h = self.b2(h)
        return self.head(F.relu(h).mean((2, 3))).view(-1)


class ConditionalCritic(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018): score = linear(h) + <embed(y), h>."""

    def __init__(self, inplace=False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 4, 2, 1), nn.Conv2d(8, 16, 4, 2, 1)
        self.act = nn.LeakyReLU(0.2, inplace=inplace)
        self.head = nn.Linear(16 * 4 * 4, 1)
        self.embed = nn.Embedding(CLASSES, 16 * 4 * 4)

    def forward(self, x, y):
        h = self.act(self.c2(self.act(self.c1(x)))).flatten(1)
        return self.head(h).view(-1) + (self.embed(y) * h).sum(1)


LABELS = torch.tensor([0, 1, 2, 0, 1, 2])
CRITICS = {  # name: (constructor(inplace), per-sample shape, extra critic args)
    "conv": (ConvCritic, (3, 16, 16), ()),
    "mlp": (MLPCritic, (5,), ()),
    "resnet": (ResNetCritic, (3, 16, 16), ()),
    "conditional": (ConditionalCritic, (3, 16, 16), (LABELS,)),
}
CASES = [(name, inplace) for name in CRITICS for inplace in (False, True)]


def make(name, inplace, dtype=torch.float64):
    torch.manual_seed(0)
    return CRITICS[name][0](inplace).to(dtype)


def flop_ratios(name, inplace, fast_relu=True):
    """(FLOPs of the penalty call, FLOPs of its outer backward), each over one critic forward on the batch."""
    critic = make(name, inplace, torch.float32)
    _, shape, args = CRITICS[name]
    real, fake, alpha = inputs(shape, torch.float32)
    with gpkernels.FlopCount() as forward:
        critic(real, *args)
    with gpkernels.FlopCount() as call:
        loss = gpkernels.gradient_penalty(critic, real, fake, *args, alpha=alpha, fast_relu=fast_relu)
    with gpkernels.FlopCount() as outer:
        loss.backward()
    return call.total / forward.total, outer.total / forward.total


# ------------------------------------------------------------------------------------ the FLOP floor

def test_flop_count_agrees_with_flop_counter_mode_where_that_runs():
    """gpkernels.FlopCount uses FlopCounterMode's formulas without its module tracker; on a step without
    a penalty (where the tracker works) the two totals are equal."""
    critic = make("resnet", True, torch.float32)
    real = inputs((3, 16, 16), torch.float32)[0]
    with FlopCounterMode(display=False) as theirs, gpkernels.FlopCount() as ours:
        critic(real).mean().backward()
    assert ours.total == theirs.get_total_flops() > 0


@pytest.mark.parametrize("name,inplace", CASES)
def test_outer_backward_is_at_the_flop_floor(name, inplace):
    """Per layer, one forward-like product for the incoming gradient and one weight-gradient product: 2.0x
    one forward. Autograd alone does 4x (the zeros it sends through the forward graph)."""
    call, outer = flop_ratios(name, inplace)
    assert outer <= 2.05, f"outer backward {outer:.3f}x one forward"
    # The inner gradient w.r.t. the points costs one forward-like product per layer, no weight gradients.
    assert call <= 2.05, f"penalty call (forward + inner gradient) {call:.3f}x one forward"
    _, slow = flop_ratios(name, inplace, fast_relu=False)
    assert slow >= 3.5, f"without rerouting the outer backward did only {slow:.3f}x: the test lost its teeth"


@pytest.mark.parametrize("name,inplace", CASES)
def test_parameter_gradients_equal_plain_autograd(name, inplace):
    _, shape, args = CRITICS[name]
    assert_matches_autograd(make(name, inplace), shape, *args)


# ------------------------------------------------------------------------------------------ activations

ACTIVATIONS = {
    "nn.ReLU": lambda: nn.ReLU(),
    "nn.ReLU-inplace": lambda: nn.ReLU(inplace=True),
    "F.relu": lambda: F.relu,
    "F.relu-inplace": lambda: (lambda x: F.relu(x, inplace=True)),
    "torch.relu": lambda: torch.relu,
    "torch.relu_": lambda: torch.relu_,
    "Tensor.relu": lambda: torch.Tensor.relu,
    "Tensor.relu_": lambda: torch.Tensor.relu_,
    "nn.LeakyReLU": lambda: nn.LeakyReLU(0.2),
    "nn.LeakyReLU-inplace": lambda: nn.LeakyReLU(0.2, inplace=True),
    "F.leaky_relu-kw": lambda: (lambda x: F.leaky_relu(x, negative_slope=0.1)),
    "F.leaky_relu-default": lambda: F.leaky_relu,
    "F.leaky_relu-negative": lambda: (lambda x: F.leaky_relu(x, -0.3)),
    "F.leaky_relu_": lambda: (lambda x: F.leaky_relu_(x, 0.2)),
    "nn.Hardtanh": lambda: nn.Hardtanh(-0.5, 0.7),
    "nn.ReLU6-inplace": lambda: nn.ReLU6(inplace=True),
    "F.relu6": lambda: F.relu6,
    "F.hardtanh_": lambda: F.hardtanh_,
    "tanh": lambda: torch.tanh,
    "nn.ELU": lambda: nn.ELU(),
}
PIECEWISE_LINEAR = [n for n in ACTIVATIONS if n not in ("tanh", "nn.ELU")]


class ActCritic(nn.Module):
    def __init__(self, act, dims=3):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(dims, 16), nn.Linear(16, 16), nn.Linear(16, 1)
        self.act = act
        self.first_layer_backward_runs = 0
        self.watch = False

    def forward(self, x):
        pre = self.l1(x)
        if self.watch and pre.grad_fn is not None:
            pre.grad_fn.register_hook(self._count)
        return self.l3(self.act(self.l2(self.act(pre * 3))))

    def _count(self, *_):
        self.first_layer_backward_runs += 1


def penalty_and_grads(critic, fast):
    real, fake, alpha = inputs((3,))
    loss = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fast_relu=fast)
    return loss, param_grads(critic, loss)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_penalty_and_gradients_bit_for_bit(name):
    torch.manual_seed(0)
    critic = ActCritic(ACTIVATIONS[name]()).double()
    slow, slow_grads = penalty_and_grads(critic, False)
    fast, fast_grads = penalty_and_grads(critic, True)
    assert torch.equal(fast, slow)
    for a, b in zip(fast_grads, slow_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_the_outer_backward_skips_the_forward_graph_exactly_when_rerouted(name):
    """With a piecewise-linear critic the outer backward reaches the forward graph of D(x_hat) only through
    autograd's materialised zeros; rerouted, it never gets there (tanh and ELU need it: their curvature is
    real)."""
    torch.manual_seed(0)
    critic = ActCritic(ACTIVATIONS[name]()).double()
    critic.watch = True
    real, fake, _ = inputs((3,))
    for fast in (False, True):
        critic.first_layer_backward_runs = 0
        loss = gpkernels.gradient_penalty(critic, real, fake, fast_relu=fast)
        assert critic.first_layer_backward_runs == 1  # the inner autograd.grad goes through it once
        torch.autograd.grad(loss, list(critic.parameters()), allow_unused=True)
        outer = critic.first_layer_backward_runs - 1
        pruned = fast and name in PIECEWISE_LINEAR
        assert outer == (0 if pruned else 1), f"fast={fast}: the outer backward ran it {outer} times"


def test_prelu_with_a_slope_that_depends_on_the_input_is_exact():
    """The slope's gradient is needed in the inner pass here, and its own derivative w.r.t. the input is real."""
    class Critic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gate, self.head = nn.Conv2d(3, 4, 3, 1, 1), nn.Linear(3, 4), nn.Linear(4 * 16, 1)

        def forward(self, x):
            slope = torch.sigmoid(self.gate(x.mean((2, 3)).mean(0)))
            return self.head(F.prelu(self.conv(x), slope).flatten(1)).view(-1)

    torch.manual_seed(0)
    assert_matches_autograd(Critic().double(), (3, 4, 4))


def test_prelu_slopes_get_their_second_order_gradient():
    """PReLU's slope enters the input gradient (dx = a g where x <= 0), so the penalty trains it."""
    for per_channel in (False, True):
        torch.manual_seed(0)
        critic = ConvCritic(act=lambda c: nn.PReLU(c if per_channel else 1, init=0.1)).double()
        assert_matches_autograd(critic, (3, 16, 16))
        real, fake, alpha = inputs((3, 16, 16))
        loss = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)
        grads = param_grads(critic, loss)
        assert all(g.abs().sum() > 0 for g, (n, _) in zip(grads, critic.named_parameters()) if "weight" in n)


# ------------------------------------------------------------------------------------------ in place

class ReadsAfterInplace(nn.Module):
    """Keeps the tensor an in-place activation modified and reads it afterwards."""

    def __init__(self, act):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(4, 1, 3, 1, 1)
        self.act = act
        self.seen = []

    def forward(self, x):
        h = self.c1(x)
        before = h.detach().clone()
        out = self.act(h)
        assert out is h  # an in-place call returns its input
        self.seen.append((before, h.detach().clone()))
        return (self.c2(h) * h.mean(1, keepdim=True)).flatten(1).sum(1) + h.square().flatten(1).sum(1)


@pytest.mark.parametrize("name", ["nn.ReLU-inplace", "nn.LeakyReLU-inplace", "torch.relu_", "F.leaky_relu_",
                                  "nn.ReLU6-inplace", "F.hardtanh_"])
def test_inplace_calls_keep_their_semantics(name):
    torch.manual_seed(0)
    critic = ReadsAfterInplace(ACTIVATIONS[name]()).double()
    real, fake, alpha = inputs((3, 5, 5))
    grads = {}
    for fast in (False, True):
        critic.seen.clear()
        loss = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fast_relu=fast)
        grads[fast] = (loss, param_grads(critic, loss), critic.seen[0])
    (l0, g0, (pre, h0)), (l1, g1, (_, h1)) = grads[False], grads[True]
    assert not torch.equal(h0, pre) and torch.equal(h1, h0)  # modified in place, to the same values
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-300)


def test_inplace_on_a_leaf_or_a_view_keeps_autograds_behaviour():
    real, fake, _ = inputs((4,))
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        gpkernels.gradient_penalty(lambda x: F.relu(x, inplace=True).sum(1), real, fake)

    def on_a_view(x):
        h = x * 2
        F.relu(h[:, :2], inplace=True)  # autograd's own view handling (CopySlices)
        return h.square().sum(1)

    def native(x):
        h = x * 2
        h[:, :2] = F.relu(h[:, :2].clone())
        return h.square().sum(1)

    _, _, alpha = inputs((4,))
    got = gpkernels.gradient_penalty(on_a_view, real, fake, alpha=alpha)
    want = gpkernels.gradient_penalty(native, real, fake, alpha=alpha, fast_relu=False)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("act", [lambda h: F.leaky_relu(h, 0.2), nn.Hardtanh(-0.5, 0.5), nn.ReLU6(),
                                 lambda h: F.leaky_relu(h, -0.3)], ids=["leaky", "hardtanh", "relu6", "leaky-neg"])
def test_an_inplace_change_of_an_output_autograd_does_not_save_is_allowed(act):
    """Autograd's LeakyReLU and Hardtanh keep their input, so the output may be changed in place afterwards
    (e.g. nn.Dropout(inplace=True) after nn.LeakyReLU): the rerouted forms save the same tensor."""
    def critic_of(lin, out):
        def critic(x):
            h = act(lin(x))
            h.mul_(2 ** 0.5)
            F.dropout(h, 0.0, training=True, inplace=True)
            return out(h).view(-1)
        return critic

    torch.manual_seed(0)
    lin, out = nn.Linear(4, 8).double(), nn.Linear(8, 1).double()
    critic = critic_of(lin, out)
    real, fake, alpha = inputs((4,))
    params = list(lin.parameters()) + list(out.parameters())
    got = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)
    want = plain_penalty(lambda x: critic(x), real, fake, alpha)
    for g, w, p in zip(torch.autograd.grad(got, params, allow_unused=True),
                       torch.autograd.grad(want, params, allow_unused=True), params):
        zero = torch.zeros_like(p)
        torch.testing.assert_close(zero if g is None else g, zero if w is None else w, rtol=1e-12, atol=1e-300)


def test_an_inplace_change_after_a_saved_output_raises_as_autograd_does():
    def critic(x):
        h = F.relu(x * 2)
        h.mul_(2)  # ReLU's backward reads its output: autograd refuses this, and so must the rerouted form
        return h.sum(1)

    real, fake, _ = inputs((4,))
    for fast in (False, True):
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            gpkernels.gradient_penalty(critic, real, fake, fast_relu=fast)


# ---------------------------------------------------------------------------------- linear ops, convs

class OpCritic(nn.Module):
    def __init__(self, op, dims=2):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.c1, self.c2 = conv(2, 4, 3, 1, 1), conv(4, 4, 3, 1, 1)
        self.op = op
        self.head = nn.LazyLinear(1)

    def forward(self, x):
        h = self.op(F.leaky_relu(self.c1(x), 0.2))
        return self.head(torch.tanh(self.c2(h)).flatten(1)).view(-1)


OPS = {
    "avg_pool2d": (lambda h: F.avg_pool2d(h, 2), 2),
    "avg_pool2d-pad": (nn.AvgPool2d(3, 2, 1, count_include_pad=False), 2),
    "adaptive_avg_pool2d": (nn.AdaptiveAvgPool2d(3), 2),
    "max_pool2d": (nn.MaxPool2d(2), 2),
    "adaptive_max_pool2d": (lambda h: F.adaptive_max_pool2d(h, 3), 2),
    "pad-reflect": (lambda h: F.pad(h, (1, 1, 2, 0), mode="reflect"), 2),
    "pad-replicate": (lambda h: F.pad(h, (1, 1, 1, 1), mode="replicate"), 2),
    "pad-circular": (lambda h: F.pad(h, (1, 1, 1, 1), mode="circular"), 2),
    "avg_pool1d": (lambda h: F.avg_pool1d(h, 2), 1),
    "max_pool3d": (lambda h: F.max_pool3d(h, 2), 3),
    "conv-dilated-grouped": (nn.Conv2d(4, 4, 3, 1, 2, dilation=2, groups=2), 2),
    "conv-same": (nn.Conv2d(4, 4, 3, padding="same"), 2),
    "conv-same-uneven": (nn.Conv2d(4, 4, 4, padding="same"), 2),
    "conv-reflect": (nn.Conv2d(4, 4, 3, 1, 1, padding_mode="reflect"), 2),
    "conv-stride3-nobias": (nn.Conv2d(4, 4, 3, 3, 1, bias=False), 2),
    "conv1d": (nn.Conv1d(4, 4, 5, 2, 2), 1),
    "conv3d": (nn.Conv3d(4, 4, 3, 1, 1), 3),
    "channels_last": (lambda h: h.contiguous(memory_format=torch.channels_last), 2),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("name", list(OPS))
def test_linear_ops_and_convolutions_equal_plain_autograd(name):
    """Covered ops, each between a rerouted conv and a curved layer (tanh: the outer backward really does
    run through the forward graph here, so the rerouted ops' first-order backward is exercised too)."""
    op, dims = OPS[name]
    torch.manual_seed(0)
    critic = OpCritic(op, dims).double()
    shape = (2,) + (8,) * dims
    critic(torch.zeros(1, *shape, dtype=torch.float64))  # materialise the lazy head
    assert_matches_autograd(critic, shape)


@pytest.mark.parametrize("op", [lambda h: F.avg_pool1d(h, 2), lambda h: F.max_pool1d(h, 3, 2, 1),
                                lambda h: F.adaptive_avg_pool1d(h, 3), lambda h: F.pad(h, (2, 1), mode="reflect"),
                                lambda h: F.pad(h, (1, 1), mode="replicate")],
                         ids=["avg", "max", "adaptive-avg", "reflect", "replicate"])
def test_pools_and_paddings_are_bit_for_bit(op):
    """Between linear layers (no convolution, whose second-order weight gradient rounds differently), the
    rerouted pools and paddings give autograd's penalty and gradients exactly."""
    torch.manual_seed(0)
    l1, l2 = nn.Linear(8, 8).double(), nn.LazyLinear(1).double()

    def critic(x):
        return l2(torch.tanh(op(F.leaky_relu(l1(x), 0.2))).flatten(1)).view(-1)

    critic(torch.zeros(1, 2, 8, dtype=torch.float64))
    params = list(l1.parameters()) + list(l2.parameters())
    real, fake, alpha = inputs((2, 8))
    results = []
    for fast in (False, True):
        loss = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fast_relu=fast)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append([loss] + [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_covered_linear_ops_leave_no_zero_work():
    """A pool and a padding between two piecewise-linear layers: the outer backward stays at 2.0x."""
    class Critic(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            h = F.max_pool2d(F.relu(self.c1(F.pad(x, (1, 1, 1, 1), mode="reflect"))), 2)
            h = F.adaptive_avg_pool2d(F.relu(self.c2(F.avg_pool2d(h, 2))), 1)
            return self.head(h.flatten(1)).view(-1)

    torch.manual_seed(0)
    critic = Critic()
    real, fake, _ = inputs((3, 16, 16), torch.float32)
    with gpkernels.FlopCount() as forward:
        critic(real)
    loss = gpkernels.gradient_penalty(critic, real, fake)
    with gpkernels.FlopCount() as outer:
        loss.backward()
    assert outer.total / forward.total <= 2.05
    assert_matches_autograd(critic.double(), (3, 16, 16))


def test_penalty_op_gradgradcheck_through_a_rerouted_critic():
    """Third order through the rerouted ops: the penalty's gradient w.r.t. the parameters, differentiated
    again, equals autograd's (Hessian-vector product of the penalty in the parameters)."""
    torch.manual_seed(0)
    critic = OpCritic(nn.AvgPool2d(2)).double()
    critic(torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    real, fake, alpha = inputs((2, 8, 8))
    params = list(critic.parameters())
    vec = [torch.randn_like(p) for p in params]
    hvps = []
    for penalty in (lambda: plain_penalty(critic, real, fake, alpha),
                    lambda: gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)):
        grads = torch.autograd.grad(penalty(), params, create_graph=True, allow_unused=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vec) if g is not None)
        hvps.append(torch.autograd.grad(dot, params, allow_unused=True))
    for got, want in zip(*hvps):
        want = torch.zeros(1, dtype=torch.float64) if want is None else want
        got = torch.zeros(1, dtype=torch.float64) if got is None else got
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_calls_that_do_not_qualify_pass_through():
    x = torch.randn(4, 3)  # no grad
    y = torch.randn(4, 3, requires_grad=True)
    with _reroute.PenaltyPoints():
        assert torch.relu(x).grad_fn is None
        assert type(torch.relu(y).grad_fn).__name__ == "_PiecewiseLinearBackward"
        assert type(F.leaky_relu(y, 0.3).grad_fn).__name__ == "_PiecewiseLinearBackward"
        assert type(torch.sigmoid(y).grad_fn).__name__ == "SigmoidBackward0"
        assert type(F.pad(y, (1, 1)).grad_fn).__name__ == "ConstantPadNdBackward0"  # no zero edge to cut
        assert type(F.rrelu(y, training=True).grad_fn).__name__ != "_PiecewiseLinearBackward"
        img = torch.randn(1, 2, 5, 5, requires_grad=True)
        w = torch.randn(2, 2, 3, 3)
        assert type(F.conv2d(img, w).grad_fn).__name__ == "_ConvBackward"
        assert type(F.conv2d(img[0], w).grad_fn).__name__ != "_ConvBackward"  # unbatched
        assert type(F.conv_transpose2d(img, w).grad_fn).__name__ == "ConvolutionBackward0"
        # Keyword arguments bind as in the original call.
        assert type(F.prelu(img, weight=torch.ones(2)).grad_fn).__name__ == "_PReLUBackward"
        assert type(F.conv2d(img, weight=w, stride=2).grad_fn).__name__ == "_ConvBackward"
        assert type(F.leaky_relu(img, negative_slope=0.1).grad_fn).__name__ == "_PiecewiseLinearBackward"
        with pytest.raises(TypeError):  # arguments that do not bind raise the original error
            F.relu(y, inplace=False, bogus=1)


# ------------------------------------------------------------------------------------------ compiled

def test_compiled_critics_work_and_train_like_eager():
    """AOTAutograd has no double backward: the penalty runs a compiled critic eagerly, whether the whole
    module, module.compile() or a submodule is compiled; its gradients equal the eager critic's."""
    real, fake, alpha = inputs((3, 16, 16), torch.float32)

    def grads_of(critic):
        loss = critic(fake).mean() - critic(real).mean()
        loss = loss + gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)
        return [g if g is not None else torch.zeros(1) for g in
                torch.autograd.grad(loss, list(critic.parameters()), allow_unused=True)]

    torch.manual_seed(0)
    eager = ConvCritic(inplace=True)
    want = grads_of(eager)
    whole = torch.compile(eager, backend="aot_eager")
    inner = ConvCritic(inplace=True)
    inner.load_state_dict(eager.state_dict())
    inner.net[2] = torch.compile(inner.net[2], backend="aot_eager")
    method = ConvCritic(inplace=True)
    method.load_state_dict(eager.state_dict())
    method.compile(backend="aot_eager")
    for critic in (whole, inner, method):
        for g, w in zip(grads_of(critic), want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_convolutions_under_autocast_keep_autocasts_dtypes(dtype):
    """Autocast runs convolutions in its low precision: the rerouted ones cast as autocast would, so their
    backward sees the same dtypes, and the penalty and parameter gradients agree with autograd's own
    (the low-precision second-order weight gradient is the one thing computed by another kernel)."""
    torch.manual_seed(0)
    critic = ConvCritic(inplace=True)
    real, fake, alpha = inputs((3, 16, 16), torch.float32)
    results = []
    for fast in (False, True):
        with torch.autocast("cpu", dtype=dtype):
            loss = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fast_relu=fast)
        results.append((loss, param_grads(critic, loss)))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-2, atol=0)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == w.dtype == torch.float32
        assert (g - w).abs().max().item() <= 3e-2 * w.abs().max().item()


def test_float64_critics_under_autocast_stay_float64():
    """Autocast does not cast float64 tensors; neither do the rerouted convolutions."""
    torch.manual_seed(0)
    critic = ConvCritic(act=lambda c: nn.PReLU(c)).double()
    real, fake, alpha = inputs((3, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)
        want = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, fast_relu=False)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for g, w in zip(param_grads(critic, got), param_grads(critic, want)):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
