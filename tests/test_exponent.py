"""The penalty's exponent p (value w |d|^p) on every backend: values, norms, first and second derivatives in
float64 against a plain-autograd formula written here and against gpkernels.reference; float32 against the
float64 truth; gradcheck and gradgradcheck; the special cases of csrc/common/penalty_math.h (zero gradient,
d = 0, one-sided below the target: finite, and 0 where specified); p = 2 is the square path; the ops of
both namespaces at the special rows; the whole-penalty reference with an exponent and W-div's sampling."""

import pytest
import torch

import gpkernels
from conftest import BACKEND_DEVICES, assert_close_to_truth, require
from gpkernels import reference

EXPONENTS = [1.0, 1.5, 2.0, 3.0, 6.0]
SETTINGS = [(t, o) for t in (0.0, 1.0) for o in (False, True)]
WEIGHT = 2.5


def plain_values(g, target, one_sided, weight, inv_scale, exponent):
    """w |d_i|^p per sample in plain autograd, the way the definition reads. Rows the one-sided form does not
    penalise (n_i <= t) are left out of the graph (their value and derivatives are 0): |d|^p has no finite
    second derivative at d = 0 for p < 2. Only for rows with g_i != 0."""
    norms = inv_scale * g.flatten(1).norm(dim=1)
    live = norms.detach() > target if one_sided else torch.ones_like(norms, dtype=torch.bool)
    values = torch.zeros_like(norms)
    values[live] = weight * (norms[live] - target).abs() ** exponent
    return values, norms


def rows(B, N, norms, inv_scale=1.0, dtype=torch.float64, seed=0):
    """B rows of N elements with norms s ||g_i|| = norms (away from the targets 0 and 1)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(B, N, generator=gen, dtype=torch.float64)
    g = g / g.norm(dim=1, keepdim=True) * torch.tensor(norms, dtype=torch.float64)[:, None] / inv_scale
    return g.to(dtype)


NORMS = [0.35, 0.8, 1.3, 1.9, 2.6]  # |n - 1| >= 0.2 and n >= 0.35: every formula is smooth there


def derivatives(fn, g, upstream, v):
    """values, the gradient of <upstream, values> and its derivative against v (a Hessian-vector product)."""
    g = g.detach().requires_grad_()
    values, norms = fn(g)
    (dg,) = torch.autograd.grad(values, g, upstream.to(values.dtype), create_graph=True)
    (hv,) = torch.autograd.grad(dg, g, v)
    return values, norms.detach(), dg, hv


def fused(backend, target, one_sided, weight, inv_scale, exponent):
    return lambda g: gpkernels.penalty(g, target=target, one_sided=one_sided, weight=weight, inv_scale=inv_scale,
                                       exponent=exponent, reduction="none", return_norms=True, backend=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("target,one_sided", SETTINGS, ids=lambda v: f"{v:g}" if isinstance(v, float) else
                         ("one" if v else "two"))
@pytest.mark.parametrize("exponent", EXPONENTS, ids=lambda p: f"p{p:g}")
def test_against_plain_autograd_float64(backend, device, exponent, target, one_sided):
    require(backend, device)
    s = 0.5
    g = rows(5, 7, NORMS, inv_scale=s).to(device)
    upstream = torch.linspace(0.5, 1.5, 5, dtype=torch.float64, device=device)
    v = torch.randn(5, 7, dtype=torch.float64, device=device)
    got = derivatives(fused(backend, target, one_sided, WEIGHT, s, exponent), g, upstream, v)
    want = derivatives(lambda x: plain_values(x, target, one_sided, WEIGHT, s, exponent), g, upstream, v)
    for name, a, b in zip(("values", "norms", "gradient", "double backward"), got, want):
        assert a.dtype == torch.float64, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    if one_sided and target == 1.0:
        dead = torch.tensor(NORMS, device=device) <= 1.0
        assert torch.all(got[0][dead] == 0) and torch.all(got[2][dead] == 0) and torch.all(got[3][dead] == 0)


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICES if p.values[0] != "reference"])
@pytest.mark.parametrize("exponent", [1.0, 1.5, 3.0, 6.0], ids=lambda p: f"p{p:g}")
def test_float32_against_the_float64_truth(backend, device, exponent):
    """float32 grads: each fused result within twice the reference's own float32 error plus 1e-5 (relative
    and absolute) of the float64 truth, on every setting (the rule of the other penalty tests)."""
    require(backend, device)
    for target, one_sided in SETTINGS:
        g = rows(5, 33, NORMS, inv_scale=0.25, seed=1)
        upstream = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
        v = torch.randn(5, 33, dtype=torch.float64)
        opts = (target, one_sided, WEIGHT, 0.25, exponent)
        got = derivatives(fused(backend, *opts), g.float().to(device), upstream.to(device), v.float().to(device))
        ref32 = derivatives(fused("reference", *opts), g.float(), upstream, v.float())
        truth = derivatives(fused("reference", *opts), g, upstream, v)
        for a, r, t in zip(got, ref32, truth):
            assert a.dtype == r.dtype
            assert_close_to_truth(a, r, t, torch.float32)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("exponent,target,one_sided", [(3.0, 1.0, False), (3.0, 0.0, False), (6.0, 1.0, True),
                                                       (6.0, 0.0, True)], ids=lambda v: f"{v}")
def test_gradcheck_and_gradgradcheck(backend, device, exponent, target, one_sided):
    """(The second derivatives of every exponent and setting are checked against plain autograd above.)"""
    require(backend, device)
    g = rows(3, 2, [0.6, 1.4, 2.1], inv_scale=0.5, seed=2).to(device).requires_grad_()

    def fn(x):
        return gpkernels.penalty(x, target=target, one_sided=one_sided, weight=WEIGHT, inv_scale=0.5,
                                 exponent=exponent, backend=backend)

    assert torch.autograd.gradcheck(fn, (g,))
    assert torch.autograd.gradgradcheck(fn, (g,))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("exponent", [1.0, 1.5, 3.0, 6.0], ids=lambda p: f"p{p:g}")
def test_zero_gradient_and_zero_excess_are_finite(backend, device, exponent):
    """Row 0 has a zero gradient (n = 0), row 1 sits exactly on the target (d = 0), row 2 is below it, row 3
    above: every result is finite, and the zero-gradient and d = 0 rows have a zero gradient and a zero
    double backward (c = k = 0 there, as penalty_math.h specifies)."""
    require(backend, device)
    g = torch.zeros(4, 6, dtype=torch.float64)
    g[1, 2] = 1.0  # n = 1 exactly
    g[2] = rows(1, 6, [0.5], seed=3)[0]
    g[3] = rows(1, 6, [1.75], seed=4)[0]
    g = g.to(device)
    upstream = torch.ones(4, dtype=torch.float64, device=device)
    v = torch.randn(4, 6, dtype=torch.float64, device=device)
    for target, one_sided in SETTINGS:
        values, norms, dg, hv = derivatives(fused(backend, target, one_sided, WEIGHT, 1.0, exponent), g, upstream, v)
        for t in (values, norms, dg, hv):
            assert torch.isfinite(t).all(), (target, one_sided)
        assert norms[0].item() == 0 and norms[1].item() == 1
        assert values[0].item() == (0.0 if one_sided or target == 0 else WEIGHT)
        assert torch.all(dg[0] == 0) and torch.all(hv[0] == 0)
        if target == 1.0:
            assert values[1].item() == 0
            assert torch.all(dg[1] == 0) and torch.all(hv[1] == 0)
            if one_sided:
                assert values[2].item() == 0 and torch.all(dg[2] == 0) and torch.all(hv[2] == 0)
        else:
            assert values[1].item() == WEIGHT
        assert torch.all(dg[3] != 0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_exponent_two_is_the_square(backend, device, dtype):
    """p = 2 runs the square path: bitwise the results without the exponent argument (and in float32 an
    exponent that rounds to 2.0f takes the same path on the fused backends, as the kernels see it rounded)."""
    require(backend, device)
    g = torch.randn(6, 3, 5, dtype=dtype, device=device)
    g[0] = 0
    v = torch.randn_like(g)
    options = [dict(), dict(target=0.0, weight=10.0), dict(target=1.0, one_sided=True, inv_scale=0.5),
               dict(target=0.5, one_sided=True, weight=3.0)]
    for opts in options:
        def run(**extra):
            x = g.clone().requires_grad_()
            loss, norms = gpkernels.penalty(x, return_norms=True, backend=backend, **opts, **extra)
            (dg,) = torch.autograd.grad(loss, x, create_graph=True)
            (hv,) = torch.autograd.grad(dg, x, v)
            return loss, norms, dg, hv

        base = run()
        variants = [run(exponent=2.0), run(exponent=2)]
        if dtype == torch.float32 and backend != "reference":
            variants.append(run(exponent=2.0 + 2.0**-30))  # 2.0f in the kernels
        for other in variants:
            for a, b in zip(base, other):
                assert torch.equal(a, b), opts


@pytest.mark.parametrize("namespace", [
    pytest.param("gpkernels", marks=pytest.mark.skipif(not gpkernels.backends.native.LOADED,
                                                       reason="extension not loaded")),
    pytest.param("gpkernels_triton", marks=pytest.mark.skipif(bool(gpkernels.backends.refusals("triton", "cpu")),
                                                              reason="no Triton for CPU tensors here")),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_ops_at_the_special_rows(namespace, dtype):
    """The three ops with p != 2 at n = 0, d = 0 and (one-sided) n < t: c and k are 0 there, so the gradient,
    d_grad_values and d_grads of those rows are exactly 0; values as specified."""
    ops = getattr(torch.ops, namespace)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.zeros(3, 5, dtype=dtype)
    g[1, 0] = 2.0  # n = s * 2 = 1 = t: d = 0
    g[2, 1] = 1.0  # n = 0.5 < t
    v = torch.ones(3, 5, dtype=dtype)
    gout = torch.ones(3, dtype=acc)
    for p in (1.0, 1.5, 3.0, 4.0, 6.0):
        for one_sided in (False, True):
            scalars = (1.0, one_sided, WEIGHT, 0.5, p)
            values, norms = ops.penalty_forward(g, *scalars)
            assert norms.tolist() == [0.0, 1.0, 0.5]
            assert values[0].item() == (0.0 if one_sided else WEIGHT)
            assert values[1].item() == 0.0
            dgrads = ops.penalty_backward(gout, g, norms, *scalars)
            d_gout, d_grads = ops.penalty_double_backward(v, gout, g, *scalars)
            special = [0, 1, 2] if one_sided else [0, 1]
            assert torch.all(dgrads[special] == 0) and torch.all(d_gout[special] == 0)
            assert torch.all(d_grads[special] == 0), (p, one_sided)
            assert torch.isfinite(d_grads).all() and torch.isfinite(d_gout).all()
        # t = 0: at n = 0 c = k = 0 (for p = 4 too, where n^(p-4) would be 1).
        scalars = (0.0, False, WEIGHT, 0.5, p)
        values, norms = ops.penalty_forward(g, *scalars)
        assert values[0].item() == 0.0
        d_gout, d_grads = ops.penalty_double_backward(v, gout, g, *scalars)
        assert d_gout[0].item() == 0 and torch.all(d_grads[0] == 0)
        assert torch.isfinite(d_grads).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf * 0
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_non_finite_gradients_still_give_nan(backend, device):
    """An inf in a gradient row (fp16 overflow under AMP) must reach the gradient as inf/NaN for every p."""
    require(backend, device)
    for p in (1.0, 1.5, 3.0, 6.0):
        for target in (0.0, 1.0):
            g = torch.randn(2, 4, device=device)
            g[1, 0] = float("inf")
            g.requires_grad_()
            loss = gpkernels.penalty(g, target=target, exponent=p, backend=backend)
            (dg,) = torch.autograd.grad(loss, g)
            assert not torch.isfinite(dg[1]).all(), (p, target)
            assert torch.isfinite(dg[0]).all()


# ------------------------------------------------------------------------------ the whole-penalty reference

def _critic():
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    return net, lambda x: net(x).squeeze(1)


@pytest.mark.parametrize("exponent", [1.5, 2.0, 6.0], ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("target", [0.0, 1.0], ids=lambda t: f"t{t:g}")
def test_reference_gradient_penalty_with_an_exponent(exponent, target):
    net, critic = _critic()
    real, fake = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    alpha = torch.rand(4, dtype=torch.float64)
    loss, norms = reference.gradient_penalty(critic, real, fake, weight=3.0, target=target, alpha=alpha,
                                             exponent=exponent, return_norms=True)
    x = (alpha[:, None] * real + (1 - alpha[:, None]) * fake).requires_grad_()
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    n = g.norm(dim=1)
    torch.testing.assert_close(norms, n.detach())
    torch.testing.assert_close(loss, 3.0 * ((n - target).abs() ** exponent).mean())
    # And the fused penalty of the same gradients gives the same loss and parameter gradients.
    fused_loss = gpkernels.penalty(g, target=target, weight=3.0, exponent=exponent)
    torch.testing.assert_close(fused_loss, loss)
    params = [net[0].weight, net[0].bias, net[2].weight]  # (the last bias does not reach the gradient)
    for x_, y_ in zip(torch.autograd.grad(loss, params), torch.autograd.grad(fused_loss, params)):
        torch.testing.assert_close(x_, y_)


def test_reference_real_and_fake_sampling():
    """sample="real_and_fake" (W-div): the penalty at the 2B points cat([real, fake]), one critic call, the mean
    over all 2B; no random draws."""
    net, critic = _critic()
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return critic(x)

    real, fake = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    points = reference.penalty_points(real, fake, sample="real_and_fake")
    assert torch.equal(points, torch.cat([real, fake])) and not points.requires_grad
    state = torch.get_rng_state()
    loss, norms = reference.gradient_penalty(counting, real, fake, weight=2.0, target=0.0, exponent=6.0,
                                             sample="real_and_fake", return_norms=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert calls == [8] and norms.shape == (8,)
    x = torch.cat([real, fake]).requires_grad_()
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    torch.testing.assert_close(loss, 2.0 * (g.norm(dim=1) ** 6).mean())
    with pytest.raises(ValueError, match="real_and_fake"):
        reference.penalty_points(real, None, sample="real_and_fake")


@pytest.mark.parametrize("exponent", [1.0, 1.5, 3.0])
def test_reference_zero_gradient_with_target_zero_is_finite(exponent):
    """||g||^p from the sum of squares: at a zero gradient (a point where the critic is flat) the parameter
    gradient stays finite for every p."""
    w = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)

    def critic(x):
        return (x @ w) ** 2  # gradient 2 (x.w) w: zero where x.w = 0

    real = torch.tensor([[1.0, 1.0, 0.0], [0.3, 0.1, 0.2]], dtype=torch.float64)
    loss = reference.gradient_penalty(critic, real, sample="real", target=0.0, exponent=exponent)
    (dw,) = torch.autograd.grad(loss, w)
    assert torch.isfinite(loss) and torch.isfinite(dw).all()
