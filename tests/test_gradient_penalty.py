"""gpkernels.gradient_penalty and its shortcuts against a plain-autograd penalty written here the way the
papers define it: penalty values and the gradient of every critic parameter, for MLP and conv critics,
with and without class labels, every `sample` mode, one- and two-sided, targets 0 and 1, on every backend,
in float64 (tight) and float32/float16/bfloat16 (the per-dtype rule of conftest)."""

import copy
import functools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gpkernels
from conftest import BACKEND_DEVICES, TOLERANCES, require

B = 5
CLASSES = 3


# ---------------------------------------------------------------------------------------------- critics

class MLPCritic(nn.Module):
    """(B, 4) -> (B,); with labels, a class embedding is added to the hidden layer."""

    def __init__(self, labels=False):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 1)
        self.embed = nn.Embedding(CLASSES, 16) if labels else None

    def forward(self, x, y=None):
        h = torch.tanh(self.l1(x))
        if self.embed is not None:
            h = h + self.embed(y)
        return self.l3(nn.functional.leaky_relu(self.l2(h), 0.2)).squeeze(1)


class ConvCritic(nn.Module):
    """(B, 2, 6, 6) -> (B, 1); with labels, a projection term <embed(y), features> (Miyato & Koyama 2018)."""

    def __init__(self, labels=False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, 2, 1), nn.Conv2d(4, 8, 3, 2, 1)
        self.norm = nn.LayerNorm([4, 3, 3])
        self.head = nn.Linear(8 * 2 * 2, 1)
        self.embed = nn.Embedding(CLASSES, 8 * 2 * 2) if labels else None

    def forward(self, x, y=None):
        h = nn.functional.leaky_relu(self.norm(self.c1(x)), 0.2)
        h = torch.tanh(self.c2(h)).flatten(1)
        out = self.head(h)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1, keepdim=True)
        return out


SHAPES = {"mlp": (B, 4), "conv": (B, 2, 6, 6)}
MODELS = {"mlp": MLPCritic, "conv": ConvCritic}


def make_critic(kind, labels, dtype=torch.float64):
    torch.manual_seed(1)
    critic = MODELS[kind](labels).to(dtype)
    # Scale the output so that the gradient norms straddle 1: the one-sided and target-1 cases then have
    # samples on both sides of the target, and a test of them can fail.
    with torch.no_grad():
        x = torch.randn((64,) + SHAPES[kind][1:], dtype=dtype, requires_grad=False)
    x.requires_grad_(True)
    y = torch.randint(0, CLASSES, (64,)) if labels else None
    args = (y,) if labels else ()
    (g,) = torch.autograd.grad(critic(x, *args).sum(), x)
    last = critic.l3 if kind == "mlp" else critic.head
    with torch.no_grad():
        factor = 1 / g.flatten(1).norm(dim=1).median()
        last.weight.mul_(factor)
        if labels:
            critic.embed.weight.mul_(factor)
    return critic


def make_data(kind, labels, dtype=torch.float64):
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(SHAPES[kind], generator=gen, dtype=torch.float64).to(dtype)
    fake = (torch.randn(SHAPES[kind], generator=gen, dtype=torch.float64) + 0.3).to(dtype)
    args = (torch.randint(0, CLASSES, (B,), generator=gen),) if labels else ()
    return real, fake, args


# ------------------------------------------------------------------------ the penalty, as the papers write it

def points_as_in_papers(sample, real, fake, alpha=None, noise=None, dragan_scale=0.5):
    if sample == "interpolate":
        a = alpha.reshape((-1,) + (1,) * (real.dim() - 1))
        return a * real + (1 - a) * fake
    if sample == "real":
        return real
    if sample == "fake":
        return fake
    perturbed = real + dragan_scale * real.std(correction=0) * noise
    a = alpha.reshape((-1,) + (1,) * (real.dim() - 1))
    return a * perturbed + (1 - a) * real


def paper_penalty(critic, x, args, *, target, one_sided, weight):
    x = x.detach().requires_grad_(True)
    out = critic(x, *args)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    norms = g.flatten(1).norm(2, dim=1)
    d = norms - target
    if one_sided:
        d = d.clamp(min=0)
    return weight * (d ** 2).mean(), norms.detach()


def param_grads(critic, loss):
    params = list(critic.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def draws(sample, real, seed=7):
    """The alpha and DRAGAN noise gradient_penalty draws from a generator seeded with `seed`: alpha first,
    then the noise, in float32 (float64 for float64 input)."""
    gen = torch.Generator().manual_seed(seed)
    draw = torch.float64 if real.dtype == torch.float64 else torch.float32
    alpha = torch.rand(real.shape[0], generator=gen, dtype=draw)
    noise = torch.rand(real.shape, generator=gen, dtype=draw) if sample == "dragan" else None
    return alpha, noise


MODES = [  # (sample, target, one_sided)
    (s, t, o) for s in ("interpolate", "real", "fake", "dragan") for t in (1.0, 0.0) for o in (False, True)]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("sample,target,one_sided", MODES, ids=[f"{s}-t{t:g}-{'one' if o else 'two'}"
                                                               for s, t, o in MODES])
@pytest.mark.parametrize("labels", [False, True], ids=["plain", "labels"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_matches_paper_float64(kind, labels, sample, target, one_sided, backend, device):
    require(backend, device)
    critic = make_critic(kind, labels).to(device)
    real, fake, args = make_data(kind, labels)
    real, fake, args = real.to(device), fake.to(device), tuple(a.to(device) for a in args)
    alpha, noise = draws(sample, real)
    gen = torch.Generator(device=device).manual_seed(7)

    loss, norms = gpkernels.gradient_penalty(critic, real, fake, *args, weight=10.0, target=target,
                                             one_sided=one_sided, sample=sample, generator=gen,
                                             return_norms=True, backend=backend)
    x = points_as_in_papers(sample, real, fake, alpha.to(device),
                            None if noise is None else noise.to(device))
    want, want_norms = paper_penalty(critic, x, args, target=target, one_sided=one_sided, weight=10.0)
    if one_sided and target == 1.0:  # both sides of the target are present, so clamping is exercised
        assert (want_norms > 1).any() and (want_norms < 1).any()
    assert loss.dtype == torch.float64 and loss.dim() == 0
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norms, want_norms, rtol=1e-12, atol=1e-12)
    for got, exp in zip(param_grads(critic, loss), param_grads(critic, want)):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)


def assert_normwise(fused, ref, truth, dtype, what):
    """||fused - truth|| <= 2 ||ref - truth|| + atol + rtol ||truth||: the conftest rule taken over a whole
    tensor, since elementwise a low-precision reference can be right by luck where a fused result is not."""
    atol, rtol = TOLERANCES[dtype]
    f, r, t = (x.detach().double().cpu() for x in (fused, ref, truth))
    err, ref_err = (f - t).norm().item(), (r - t).norm().item()
    bound = 2 * ref_err + atol + rtol * t.norm().item()
    assert torch.isfinite(f).all(), f"{what}: non-finite"
    assert err <= bound, f"{what}: error {err:.3g} > bound {bound:.3g} (reference's own error {ref_err:.3g})"


LOW = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("sample,target", [("interpolate", 1.0), ("real", 0.0)])
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_matches_paper_low_precision(kind, dtype, sample, target, backend, device):
    require(backend, device)
    truth_critic = make_critic(kind, True).to(device)
    critic = copy.deepcopy(truth_critic).to(dtype)
    truth_critic = copy.deepcopy(critic).double()  # the same rounded parameters, in float64
    real, fake, args = make_data(kind, True, dtype)
    real, fake = real.to(device), fake.to(device)
    args = tuple(a.to(device) for a in args)
    alpha = torch.rand(B, dtype=torch.float32).to(dtype).to(device)

    loss = gpkernels.gradient_penalty(critic, real, fake, *args, target=target, sample=sample,
                                      alpha=alpha if sample == "interpolate" else None, backend=backend)
    x_low = points_as_in_papers(sample, real, fake, alpha)
    ref, _ = paper_penalty(critic, x_low, args, target=target, one_sided=False, weight=10.0)
    x64 = points_as_in_papers(sample, real.double(), fake.double(), alpha.double())
    truth, _ = paper_penalty(truth_critic, x64, args, target=target, one_sided=False, weight=10.0)

    assert loss.dtype == torch.float32
    assert_normwise(loss, ref, truth, dtype, "penalty")
    for name, got, exp, tru in zip([n for n, _ in critic.named_parameters()], param_grads(critic, loss),
                                   param_grads(critic, ref), param_grads(truth_critic, truth)):
        assert got.dtype == dtype
        assert_normwise(got, exp, tru, dtype, f"grad of {name}")


# ------------------------------------------------------------------------------------ inputs and outputs

class MultiScale(nn.Module):
    """A critic of a pair (B, 2, 6, 6) and (B, 2, 3, 3), e.g. two scales of one image."""

    def __init__(self):
        super().__init__()
        self.big, self.small = nn.Conv2d(2, 3, 3, 2, 1), nn.Conv2d(2, 3, 3, 1, 1)
        self.head = nn.Linear(27, 1)

    def forward(self, xs, scale=1.0):
        assert isinstance(xs, (tuple, list))
        h = torch.tanh(self.big(xs[0]) + self.small(xs[1])).flatten(1)
        return scale * self.head(h).squeeze(1)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("container", [tuple, list])
def test_tuple_inputs_share_alpha_and_one_joint_norm(container, backend, device):
    require(backend, device)
    torch.manual_seed(3)
    critic = MultiScale().double().to(device)
    real = container(torch.randn(s, dtype=torch.float64, device=device) for s in [(B, 2, 6, 6), (B, 2, 3, 3)])
    fake = container(torch.randn(s, dtype=torch.float64, device=device) for s in [(B, 2, 6, 6), (B, 2, 3, 3)])
    alpha = torch.rand(B, dtype=torch.float64, device=device)
    loss, norms = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, scale=2.0, return_norms=True,
                                             backend=backend)
    a = alpha.reshape(B, 1, 1, 1)
    xs = container((a * r + (1 - a) * f).requires_grad_() for r, f in zip(real, fake))
    gs = torch.autograd.grad(critic(xs, scale=2.0).sum(), xs, create_graph=True)
    joint = torch.cat([g.flatten(1) for g in gs], 1).norm(dim=1)
    want = 10 * ((joint - 1) ** 2).mean()
    torch.testing.assert_close(norms, joint.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    for got, exp in zip(param_grads(critic, loss), param_grads(critic, want)):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-13)


def test_part_the_critic_ignores_counts_as_zero_gradient():
    critic = lambda xs: xs[0].flatten(1).sum(1)  # noqa: E731  (the second input is unused)
    real = (torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64))
    fake = tuple(torch.randn_like(r) for r in real)
    loss, norms = gpkernels.gradient_penalty(critic, real, fake, return_norms=True, target=0.0)
    torch.testing.assert_close(norms, torch.full((B,), 3 ** 0.5, dtype=torch.float64))


@pytest.mark.parametrize("form", ["(B,)", "(B,1)", "(B,1,1,1)", "tuple", "list"])
def test_critic_output_forms_give_the_same_penalty(form):
    critic = make_critic("mlp", False)
    real, fake, _ = make_data("mlp", False)
    alpha = torch.rand(B, dtype=torch.float64)
    wrap = {
        "(B,)": lambda x: critic(x),
        "(B,1)": lambda x: critic(x)[:, None],
        "(B,1,1,1)": lambda x: critic(x).reshape(B, 1, 1, 1),
        "tuple": lambda x: (critic(x), torch.zeros(B, 7)),
        "list": lambda x: [critic(x)[:, None], "features"],
    }[form]
    got = gpkernels.gradient_penalty(wrap, real, fake, alpha=alpha)
    want = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_keyword_arguments_reach_the_critic():
    critic = make_critic("mlp", True)
    real, fake, (y,) = make_data("mlp", True)
    alpha = torch.rand(B, dtype=torch.float64)
    by_kw = gpkernels.gradient_penalty(critic, real, fake, y=y, alpha=alpha)
    by_pos = gpkernels.gradient_penalty(critic, real, fake, y, alpha=alpha)
    other = gpkernels.gradient_penalty(critic, real, fake, (y + 1) % CLASSES, alpha=alpha)
    torch.testing.assert_close(by_kw, by_pos, rtol=0, atol=0)
    assert not torch.allclose(by_pos, other)


@pytest.mark.parametrize("name,sample,target,one_sided,weight", [
    ("wgan_gp_penalty", "interpolate", 1.0, False, 10.0),
    ("lipschitz_penalty", "interpolate", 1.0, True, 10.0),
    ("r1_penalty", "real", 0.0, False, 5.0),
    ("r2_penalty", "fake", 0.0, False, 5.0),
    ("dragan_penalty", "dragan", 1.0, False, 10.0),
])
def test_shortcuts_are_gradient_penalty_with_their_settings(name, sample, target, one_sided, weight):
    critic = make_critic("conv", True)
    real, fake, args = make_data("conv", True)
    fn = getattr(gpkernels, name)
    gen = torch.Generator().manual_seed(5)
    if name in ("r1_penalty", "dragan_penalty"):
        kw = {"generator": gen} if name == "dragan_penalty" else {}
        got = fn(critic, real, *args, **kw)
    elif name == "r2_penalty":
        got = fn(critic, fake, *args)
    else:
        got = fn(critic, real, fake, *args, generator=gen)
    want = gpkernels.gradient_penalty(critic, real, fake, *args, sample=sample, target=target,
                                      one_sided=one_sided, weight=weight,
                                      generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_inputs_untouched_and_no_gradient_into_real_or_fake():
    critic = make_critic("conv", False)
    real, fake, _ = make_data("conv", False)
    real.requires_grad_(True)  # e.g. a tensor the caller differentiates elsewhere
    before = real.detach().clone(), fake.clone()
    for sample in ("interpolate", "real", "fake", "dragan"):
        loss = gpkernels.gradient_penalty(critic, real, fake, sample=sample)
        loss.backward()
    assert real.requires_grad and not fake.requires_grad
    assert real.grad is None and fake.grad is None
    assert torch.equal(real.detach(), before[0]) and torch.equal(fake, before[1])
    assert real.grad_fn is None and real.is_leaf


def test_generator_makes_draws_reproducible_and_default_generator_is_used_otherwise():
    critic = make_critic("mlp", False)
    real, fake, _ = make_data("mlp", False)
    one = gpkernels.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(9))
    two = gpkernels.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(one, two, rtol=0, atol=0)
    torch.manual_seed(4)
    a = gpkernels.gradient_penalty(critic, real, fake, sample="dragan")
    torch.manual_seed(4)
    b = gpkernels.gradient_penalty(critic, real, fake, sample="dragan")
    c = gpkernels.gradient_penalty(critic, real, fake, sample="dragan")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


# ------------------------------------------------------------------------------------------------ safety

def _bn_critic(norm=nn.BatchNorm1d):
    layer = norm() if norm is nn.LazyBatchNorm1d else norm(8)
    return nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 1)).double()


def _functional_bn_critic():
    """A critic with no nn.Module at all: batch statistics through F.batch_norm."""
    w = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(8, dtype=torch.float64, requires_grad=True)

    def critic(x):
        h = F.batch_norm(x @ w.t(), None, None, training=True)
        return h @ v

    return critic


# How users hand over a critic: the safety check must see a batch norm behind each of them.
WRAPPERS = {
    "module": (lambda D: D, {}),
    "lambda": (lambda D: (lambda x: D(x)), {}),
    "partial": (lambda D: functools.partial(D), {}),
    "bound-method": (lambda D: D.forward, {}),
    "dict-output": (lambda D: (lambda x: {"adv_output": D(x), "aux": x.sum(1)}), dict(score="adv_output")),
    "DataParallel": (lambda D: nn.DataParallel(D), {}),
}


@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.SyncBatchNorm, nn.LazyBatchNorm1d])
def test_batch_statistics_warn_and_strict_raises_whatever_wraps_the_critic(norm, wrap):
    make, options = WRAPPERS[wrap]
    D = _bn_critic(norm)
    critic = make(D)
    real, fake, _ = make_data("mlp", False)
    named = r"(module\.)?1 \((BatchNorm1d|SyncBatchNorm)\)"
    with pytest.raises(ValueError, match=r"batch_norm with batch statistics in " + named + r".*LayerNorm"):
        gpkernels.gradient_penalty(critic, real, fake, strict=True, **options)
    with pytest.warns(UserWarning, match=r"ran 1 call\(s\) that mix the samples"):
        gpkernels.gradient_penalty(critic, real, fake, **options)
    with pytest.warns(UserWarning, match="mix the samples"):
        gpkernels.finite_difference_penalty(critic, real, fake, **options)


def test_batch_statistics_in_functional_code_are_seen_too():
    real, fake, _ = make_data("mlp", False)
    with pytest.raises(ValueError, match=r"batch_norm with batch statistics on a \(5, 8\) input"):
        gpkernels.gradient_penalty(_functional_bn_critic(), real, fake, strict=True)


def test_batch_norm_with_running_statistics_is_per_sample(recwarn):
    """In eval mode (running statistics) a batch norm is an affine map per sample: nothing to warn about,
    and the penalty equals a plain-autograd one of the same critic."""
    D = _bn_critic()
    D(torch.randn(32, 4, dtype=torch.float64))      # some running statistics
    D.eval()
    real, fake, _ = make_data("mlp", False)
    alpha = torch.rand(real.shape[0], dtype=torch.float64)
    got = gpkernels.gradient_penalty(D, real, fake, alpha=alpha, strict=True)
    want, _ = paper_penalty(D, points_as_in_papers("interpolate", real, fake, alpha), (), target=1.0,
                            one_sided=False, weight=10.0)
    torch.testing.assert_close(got, want)
    assert not [w for w in recwarn if "mix the samples" in str(w.message)]


@pytest.mark.parametrize("norm", ["layer", "instance", "group"])
def test_other_norms_do_not_warn(norm, recwarn):
    layer = {"layer": nn.LayerNorm([2, 6, 6]), "instance": nn.InstanceNorm2d(2, affine=True),
             "group": nn.GroupNorm(1, 2)}[norm]
    critic = nn.Sequential(layer, nn.Flatten(), nn.Linear(72, 1)).double()
    real, fake, _ = make_data("conv", False)
    gpkernels.gradient_penalty(critic, real, fake, strict=True)
    assert not [w for w in recwarn if "mix the samples" in str(w.message)]


def _real_fake():
    real, fake, _ = make_data("mlp", False)
    return real, fake


@pytest.mark.parametrize("call,error,match", [
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f[:3]), ValueError, "shape of real"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f.float()), TypeError, "dtype of real"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f.to("meta")), ValueError, "fake is on meta"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r.long(), f.long()), TypeError, "real must be float"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, None), ValueError, "fake is required"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, None, f), ValueError, "real is required"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, (f,)), ValueError, "same structure"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, (r, r[:2]), (f, f)), ValueError, r"real\[1\] has batch"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, weight=-1), ValueError, "weight must be finite"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, weight=float("nan")), ValueError, "weight"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, target=-0.5), ValueError, "target must be"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, target="1"), TypeError, "target must be a number"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, sample="mixed"), ValueError, "sample must be"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, sample="real", alpha=f[:, 0]), ValueError, "alpha"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, alpha=torch.rand(3).double()), ValueError,
     "alpha must hold one mixing weight per sample"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, sample="dragan", dragan_scale=0), ValueError,
     "dragan_scale"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, one_sided=1), TypeError, "one_sided must be a bool"),
    (lambda c, r, f: gpkernels.gradient_penalty("critic", r, f), TypeError, "critic must be callable"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, backend="fast"), ValueError, "unknown backend"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, scaler=2.0 ** 16), TypeError, "GradScaler"),
    (lambda c, r, f: gpkernels.gradient_penalty(c, r, f, fast_relu=None), TypeError, "fast_relu must be a bool"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
    critic = make_critic("mlp", False)
    real, fake = _real_fake()
    with pytest.raises(error, match=match):
        call(critic, real, fake)


@pytest.mark.parametrize("critic,error,match", [
    (lambda x: x.sum(), ValueError, r"one score per sample.*\(\).*reduce over the batch"),
    (lambda x: x[:, :2], ValueError, r"one score per sample, shape \(5,\).*got \(5, 2\)"),
    (lambda x: x[:3, 0], ValueError, "one score per sample"),
    (lambda x: (x[:, 0] > 0), TypeError, "floating"),
    (lambda x: "score", TypeError, "must return a tensor"),
    (lambda x: (), ValueError, "empty tuple"),
    (lambda x: torch.zeros(5, dtype=x.dtype), RuntimeError, "does not depend on its input"),
    (lambda x: x.detach().sum(1) * nn.Parameter(torch.ones((), dtype=x.dtype)), RuntimeError,
     "does not depend on its input"),
])
def test_bad_critics_raise_clear_errors(critic, error, match):
    real, fake = _real_fake()
    with pytest.raises(error, match=match):
        gpkernels.gradient_penalty(critic, real, fake)


def test_critic_under_no_grad_raises():
    lin = make_critic("mlp", False)

    def critic(x):
        with torch.no_grad():
            return lin(x)

    real, fake = _real_fake()
    with pytest.raises(RuntimeError, match="does not depend on its input"):
        gpkernels.gradient_penalty(critic, real, fake)


def test_called_without_autograd_says_so():
    critic = make_critic("mlp", False)
    real, fake = _real_fake()
    with torch.no_grad(), pytest.raises(RuntimeError, match="autograd is disabled"):
        gpkernels.gradient_penalty(critic, real, fake)


@pytest.mark.parametrize("sample", ["real", "interpolate"])
def test_inference_mode_inputs_work(sample):
    critic = make_critic("mlp", False)
    with torch.inference_mode():
        real, fake = _real_fake()
        real, fake = real * 1, fake * 1
    alpha = torch.rand(B, dtype=torch.float64) if sample == "interpolate" else None
    got = gpkernels.gradient_penalty(critic, real, fake, sample=sample, alpha=alpha)
    want = gpkernels.gradient_penalty(critic, real.clone(), fake.clone(), sample=sample, alpha=alpha)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------- AMP

class Poison(torch.autograd.Function):
    """Identity forward; its backward multiplies sample 0's gradient by inf (an fp16 overflow stand-in).
    Differentiable, so it also sits in the double backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        mask = torch.ones_like(g)
        mask[0] = float("inf")
        return g * mask


class AmpCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.Tanh(),
                                 nn.Linear(32, 1))
        self.poison = False

    def forward(self, x):
        if self.poison:
            x = Poison.apply(x)
        return self.net(x)


def critic_step_loss(critic, real, fake, alpha, scaler=None, poison=False):
    loss = critic(fake).float().mean() - critic(real).float().mean()
    critic.poison = poison
    try:
        gp = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, scaler=scaler)
    finally:
        critic.poison = False
    return loss + gp


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_grad_scaler_fp16_matches_fp32_gradients(backend, device):
    require(backend, device)
    torch.manual_seed(0)
    critic = AmpCritic().to(device)
    real, fake = torch.randn(16, 4, device=device), torch.randn(16, 4, device=device) + 1
    alpha = torch.rand(16, device=device)
    with gpkernels.use_backend(backend):
        want = param_grads(critic, critic_step_loss(critic, real, fake, alpha))
        scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 12)
        opt = torch.optim.SGD(critic.parameters(), lr=0.0)
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.float16):
            loss = critic_step_loss(critic, real, fake, alpha, scaler)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    for p, w in zip(critic.parameters(), want):
        got = p.grad
        assert got is not None and torch.isfinite(got).all()
        scale = w.abs().max().item()
        assert (got - w).abs().max().item() <= 2e-2 * scale + 1e-3, "fp16 AMP gradient off"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # Triton's interpreter
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_non_finite_inner_gradient_makes_the_scaler_skip_the_step(backend, device):
    require(backend, device)
    torch.manual_seed(0)
    critic = AmpCritic().to(device)
    real, fake = torch.randn(8, 4, device=device), torch.randn(8, 4, device=device) + 1
    alpha = torch.rand(8, device=device)
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10)
    for poison, expect_step in [(True, False), (False, True)]:
        before = [p.detach().clone() for p in critic.parameters()]
        scale_before = scaler.get_scale()
        opt.zero_grad()
        with gpkernels.use_backend(backend), torch.autocast(device, dtype=torch.float16):
            loss = critic_step_loss(critic, real, fake, alpha, scaler, poison=poison)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        changed = any(not torch.equal(p, q) for p, q in zip(critic.parameters(), before))
        assert changed == expect_step
        if poison:
            assert not torch.isfinite(loss)
            assert scaler.get_scale() < scale_before  # the scaler saw the overflow


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_under_autocast_matches_the_paper_formula_under_autocast(dtype):
    torch.manual_seed(0)
    critic = AmpCritic()
    real, fake = torch.randn(16, 4), torch.randn(16, 4) + 1
    alpha = torch.rand(16)
    with torch.autocast("cpu", dtype=dtype):
        got = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)
        ref, _ = paper_penalty(critic, points_as_in_papers("interpolate", real, fake, alpha), (),
                               target=1.0, one_sided=False, weight=10.0)
    truth, _ = paper_penalty(critic, points_as_in_papers("interpolate", real, fake, alpha), (),
                             target=1.0, one_sided=False, weight=10.0)
    assert got.dtype == torch.float32
    assert_normwise(got, ref, truth, dtype, "penalty under autocast")
    for got_g, ref_g, tru_g in zip(param_grads(critic, got), param_grads(critic, ref.float()),
                                   param_grads(critic, truth)):
        assert_normwise(got_g, ref_g, tru_g, dtype, "parameter gradient under autocast")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # Triton's interpreter
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("target", [1.0, 0.0])
@pytest.mark.parametrize("one_sided", [False, True])
def test_fused_penalty_passes_non_finite_gradients_on(bad, target, one_sided, backend, device):
    """The kernels' zero-norm guard must not swallow a NaN/inf inner gradient: GradScaler relies on it."""
    require(backend, device)
    g = torch.randn(4, 6, device=device)
    g[1, 2] = bad
    g.requires_grad_(True)
    loss = gpkernels.penalty(g, target=target, one_sided=one_sided, weight=10.0, backend=backend)
    (dg,) = torch.autograd.grad(loss, g, create_graph=True)
    (ddg,) = torch.autograd.grad((dg * torch.randn_like(dg)).sum(), g)
    assert not torch.isfinite(loss)
    assert not torch.isfinite(dg[1]).all() and torch.isfinite(dg[[0, 2, 3]]).all()
    assert torch.isfinite(ddg[[0, 2, 3]]).all()
    if target != 0:  # with target 0 the second derivative 2 w s^2 V does not involve g at all
        assert not torch.isfinite(ddg[1]).all()


def test_the_amp_path_never_reads_the_scale_on_the_host(monkeypatch):
    """A host read of the scale (scaler.get_scale(), Tensor.item()) synchronises the CUDA stream every step and
    rules out CUDA-graph capture: the penalty keeps the scale on the device (on a GPU, the gpu tests run it
    under torch.cuda.set_sync_debug_mode("error"))."""
    torch.manual_seed(0)
    critic = AmpCritic()
    real, fake = torch.randn(8, 4), torch.randn(8, 4) + 1
    alpha = torch.rand(8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    want = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha)

    def no_host_read(*args, **kwargs):
        raise AssertionError("the scale was read on the host")

    monkeypatch.setattr(torch.Tensor, "item", no_host_read)
    monkeypatch.setattr(torch.amp.GradScaler, "get_scale", no_host_read)
    got = gpkernels.gradient_penalty(critic, real, fake, alpha=alpha, scaler=scaler)
    monkeypatch.undo()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
