"""The penalty at extreme gradient norms (csrc/common/penalty_math.h, "Range"): every backend that runs here
against values computed exactly (Python's decimal arithmetic at 50 digits, from the very inputs), for rows
whose norms span the whole range of the accumulation type, tiny, normal and zero rows mixed in one batch:
values, norms, the gradient, the double backward and its part in the upstream gradient, p in {2, 6}, target
0 and 1, one-sided or not. Results the output type cannot hold must be inf (above its largest finite
number) or about 0 (below its smallest normal number); every other one must be close to the exact value.
Also: the issue's repro (g = 1e-14 * randn(2, 8), v = 0 on one row), rows that need no rescue are unchanged
bit for bit by rescued rows in the same batch, and a NaN or inf in a gradient still gives NaN/inf."""

import decimal
import math

import pytest
import torch

import gpkernels
from conftest import BACKEND_DEVICES, require

D = decimal.Context(prec=50, Emax=10**7, Emin=-(10**7))
WEIGHT = 10.0
N = 8

# Row norms ||g_i||: the whole float32 range (1e-38 is below its smallest normal number, 2^-126 its smallest
# normal number, 2e19 and up overflow a plain float32 sum of squares), and float64's.
NORMS = {
    torch.float32: [1e-38, 2.0**-126, 1e-30, 1e-20, 1e-14, 1e-3, 0.6, 7.5, 1e14, 1e19, 2e19, 1e25, 1e30, 1e37, 1e38],
    torch.float64: [1e-300, 2.0**-1022, 1e-200, 1e-160, 1e-100, 0.6, 3.5, 1e100, 1e160, 1e200, 1e300],
}
# (p, t, one_sided); one-sided with t = 0 is two-sided (d = n >= 0)
SETTINGS = [(p, t, o) for p in (2.0, 6.0) for t, o in ((0.0, False), (1.0, False), (1.0, True))]

# Under the interpreter the kernels are numpy, which warns where a result overflows (to inf, as it must here).
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


def _id(v):
    return f"{v:g}" if isinstance(v, float) else ("one" if v else "two")


def make_rows(dtype, norms, seed=0):
    """Rows of N elements with the given norms (in float64 before rounding to dtype), then a zero row, a row
    whose only nonzero element is the smallest normal number, and a row mixing a tiny and a normal element."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(len(norms), N, generator=gen, dtype=torch.float64)
    g = u / u.norm(dim=1, keepdim=True) * torch.tensor(norms, dtype=torch.float64)[:, None]
    tiny = torch.finfo(dtype).tiny
    extra = torch.zeros(3, N, dtype=torch.float64)
    extra[1, 3] = tiny
    extra[2, 0], extra[2, 5] = 1e-30 if dtype == torch.float32 else 1e-200, 0.75
    return torch.cat([g, extra]).to(dtype)


def exact(g, v, up, p, t, one_sided, w, s):
    """values, norms, gout_i c_i g_i, gout_i (c_i v_i + k_i <g_i, v_i> g_i) and c_i <g_i, v_i> per row, from the
    formulas of penalty_math.h (with its special cases), in decimal arithmetic: lists of Decimal; and for each a
    scale per row, the magnitude rounding errors are relative to (the terms' magnitudes before any cancellation:
    <g, v> is rounded relative to sum |g v|)."""
    with decimal.localcontext(D):
        return _exact(g, v, up, p, t, one_sided, w, s)


def _exact(g, v, up, p, t, one_sided, w, s):
    out = [[] for _ in range(5)]
    scales = [[] for _ in range(5)]
    P, T, W, S = (D.create_decimal_from_float(float(x)) for x in (p, t, w, s))
    for gi, vi, ui in zip(g.double().tolist(), v.double().tolist(), up.double().tolist()):
        gd = [D.create_decimal_from_float(x) for x in gi]
        vd = [D.create_decimal_from_float(x) for x in vi]
        go = D.create_decimal_from_float(ui)
        m = D.sqrt(sum((D.multiply(x, x) for x in gd), D.create_decimal(0)))
        n = S * m
        d = n - T
        if one_sided and d < 0:
            d = D.create_decimal(0)

        def phi(x, q):  # |x|^(q-1) sign(x), 0 at 0
            return 0 if x == 0 else D.power(abs(x), q - 1) * (1 if x > 0 else -1)

        def phi_slope(x, q):  # (q-1) |x|^(q-2), 0 at 0
            return 0 if x == 0 else (q - 1) * D.power(abs(x), q - 2)

        value = W * D.power(abs(d), P)
        if p == 2 and t == 0:
            c, k = 2 * W * S * S, 0
        elif m == 0:
            c, k = 0, 0
        else:
            r = S / n
            if t == 0:
                c = W * P * S * S * D.power(n, P - 2)
                k = W * P * (P - 2) * S**4 * D.power(n, P - 4)
            else:
                c = W * P * phi(d, P) * S * r
                k = 2 * W * T * S * r**3 if p == 2 else W * P * S * r * r * (S * phi_slope(d, P) - r * phi(d, P))
            if one_sided and n <= T:
                k = 0
        dot = sum((x * y for x, y in zip(gd, vd)), D.create_decimal(0))
        adot = sum((abs(x * y) for x, y in zip(gd, vd)), D.create_decimal(0))
        out[0].append(value)
        out[1].append(n)
        out[2].append([go * c * x for x in gd])
        out[3].append([go * (c * y + k * dot * x) for x, y in zip(gd, vd)])
        out[4].append(c * dot)
        scales[0].append(abs(value) + abs(W * P * D.power(abs(d), P - 1) * n))  # d = n - t: n's rounding
        scales[1].append(n)
        scales[2].append(max(abs(x) for x in out[2][-1]))
        scales[3].append(max(abs(go) * (abs(c * y) + abs(k) * adot * abs(x)) for x, y in zip(gd, vd)))
        scales[4].append(abs(c) * adot)
    return out, scales


def run(backend, g, v, up, p, t, one_sided, w, s):
    """values, norms, the gradient of <up, values>, its derivative against v (in g and in up)."""
    g = g.detach().clone().requires_grad_()
    up = up.detach().clone().requires_grad_()
    values, norms = gpkernels.penalty(g, target=t, one_sided=one_sided, weight=w, inv_scale=s, exponent=p,
                                      reduction="none", return_norms=True, backend=backend)
    (dg,) = torch.autograd.grad(values, g, up.to(values.dtype), create_graph=True)
    hv, d_up = torch.autograd.grad(dg, (g, up), v)
    return values.detach(), norms, dg.detach(), hv, d_up


def check(name, got, want, dtype, rtol, rows=None, scales=None):
    """got (a tensor) against exact Decimals (a list per row, of numbers or of lists): not finite above the largest
    finite number (inf of the right sign, or NaN where terms of opposite signs both overflow), at most a few
    smallest-normal numbers away below the smallest normal number, else within rtol of the largest exact
    magnitude in that row (or scales[i]); rows=None: all."""
    info = torch.finfo(dtype)
    big, tiny = D.create_decimal_from_float(info.max), D.create_decimal_from_float(info.tiny)
    rtol = D.create_decimal_from_float(rtol)
    got = got.detach().double().cpu().reshape(len(want), -1).tolist()
    for i, (gr, wr) in enumerate(zip(got, want)):
        if rows is not None and i not in rows:
            continue
        wr = wr if isinstance(wr, list) else [wr]
        scale = max(abs(x) for x in wr) if scales is None else scales[i]
        for j, (x, y) in enumerate(zip(gr, wr)):
            where = f"{name} row {i} element {j}: got {x!r}, exact {float(y)!r}"
            if abs(y) > big * D.create_decimal("1.00001"):
                assert not math.isfinite(x) and (math.isnan(x) or (x > 0) == (y > 0)), where
            elif abs(y) > big * D.create_decimal("0.99999"):
                continue  # rounds either way
            else:
                assert math.isfinite(x), where
                err = abs(D.create_decimal_from_float(x) - y)
                assert err <= rtol * scale + 4 * tiny, where


def exact_case(dtype, p, t, one_sided, s=1.0, seed=0):
    g = make_rows(dtype, NORMS[dtype], seed)
    gen = torch.Generator().manual_seed(seed + 1)
    v = torch.randn(g.shape, generator=gen, dtype=torch.float64).to(dtype)
    v[-1] = 0  # v = 0 on a row (the issue's NaN)
    up = torch.rand(g.shape[0], generator=gen, dtype=torch.float64) + 0.5
    up = up.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return g, v, up, exact(g, v, up, p, t, one_sided, WEIGHT, s)


def reference_rows(g, p, t):
    """Rows whose derivatives the reference backend's plain autograd can give: all but those whose plain sum of
    squares overflows where the value (w s^2 ||g||^2 beyond the largest number) has no finite chain through
    it (t != 0 or p != 2); see gpkernels.reference._row_norms."""
    acc = torch.float64 if g.dtype == torch.float64 else torch.float32
    sumsq = (g.to(acc) ** 2).sum(dim=1)
    if p == 2 and t == 0:
        return None
    return [i for i in range(g.shape[0]) if torch.isfinite(sumsq[i])]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("p,t,one_sided", SETTINGS, ids=_id)
def test_against_exact_values(backend, device, dtype, p, t, one_sided):
    require(backend, device)
    g, v, up, (want, scales) = exact_case(dtype, p, t, one_sided)
    got = run(backend, g.to(device), v.to(device), up.to(device), p, t, one_sided, WEIGHT, 1.0)
    rtol = 2e-6 if dtype == torch.float32 else 1e-12
    rows = reference_rows(g, p, t) if backend == "reference" else None
    names = ("values", "norms", "gradient", "double backward", "d_upstream")
    for i, (name, x, y) in enumerate(zip(names, got, want)):
        check(name, x, y, dtype, rtol, rows if i >= 2 else None, scales[i])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("p,t", [(2.0, 1.0), (6.0, 1.0), (2.0, 0.0)], ids=_id)
def test_against_exact_values_with_an_inverse_scale(backend, device, p, t):
    """AMP's inv_scale s (n_i = s ||g_i||): the backward starts from n_i, which is subnormal for the tiniest rows
    here (fewer bits: a looser tolerance)."""
    require(backend, device)
    s = 2.0**-10
    g, v, up, (want, scales) = exact_case(torch.float32, p, t, False, s=s, seed=3)
    got = run(backend, g.to(device), v.to(device), up.to(device), p, t, False, WEIGHT, s)
    rows = reference_rows(g, p, t) if backend == "reference" else None
    names = ("values", "norms", "gradient", "double backward", "d_upstream")
    for i, (name, x, y) in enumerate(zip(names, got, want)):
        check(name, x, y, torch.float32, 2e-6 if i < 2 else 1e-4, rows if i >= 2 else None, scales[i])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_the_issue_repro(backend, device):
    """g = 1e-14 * randn(2, 8) with v = 0 on one row: the double backward was (inf, NaN) in float32 where the
    float64 answer is finite (exactly 0 on that row); now it is the float64 answer, rounded."""
    require(backend, device)
    g = 1e-14 * torch.randn(2, 8)
    v = torch.randn(2, 8)
    v[1] = 0
    up = torch.ones(2)
    got = run(backend, g.to(device), v.to(device), up.to(device), 2.0, 1.0, False, 1.0, 1.0)
    truth = run("reference", g.double(), v.double(), up.double(), 2.0, 1.0, False, 1.0, 1.0)
    for x, y in zip(got, truth):
        x = x.double().cpu()
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, rtol=2e-6, atol=0)
    assert torch.all(got[3][1] == 0) and got[4][1].item() == 0


def _ops_namespaces():
    params = []
    if gpkernels.backends.native.LOADED:
        params.append("gpkernels")
    if not gpkernels.backends.refusals("triton", "cpu"):
        params.append("gpkernels_triton")
    return params


@pytest.mark.parametrize("namespace", _ops_namespaces())
def test_the_issue_repro_at_the_op(namespace):
    """The same at the op: penalty_double_backward's (d_gout, d_grads) are finite, 0 on the v = 0 row."""
    ops = getattr(torch.ops, namespace)
    g = 1e-14 * torch.randn(2, 8)
    v = torch.randn(2, 8)
    v[1] = 0
    d_gout, d_grads = ops.penalty_double_backward(v, torch.ones(2), g, 1.0, False, 1.0, 1.0, 2.0)
    assert torch.isfinite(d_gout).all() and torch.isfinite(d_grads).all()
    assert d_gout[1].item() == 0 and torch.all(d_grads[1] == 0)
    truth, scales = exact(g, v, torch.ones(2), 2.0, 1.0, False, 1.0, 1.0)
    check("d_grads", d_grads, truth[3], torch.float32, 2e-6, scales=scales[3])
    check("d_gout", d_gout, truth[4], torch.float32, 2e-6, scales=scales[4])


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICES if p.values[0] != "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("p,t,one_sided", [(2.0, 1.0, False), (2.0, 0.0, False), (6.0, 1.0, True)], ids=_id)
def test_rows_that_need_no_rescue_are_unchanged(backend, device, dtype, p, t, one_sided):
    """Rows whose plain sum of squares is a normal number give bitwise the same results beside rescued rows (0,
    tiny, huge) as alone: the rescue touches nothing else."""
    require(backend, device)
    normal = torch.randn(3, N, dtype=dtype) * torch.tensor([0.1, 1.0, 30.0], dtype=dtype)[:, None]
    extreme = make_rows(dtype, [NORMS[dtype][0], NORMS[dtype][-1]])  # tiny, huge, zero, smallest normal, mixed
    g = torch.cat([normal, extreme])
    v = torch.randn(g.shape, dtype=dtype)
    up = torch.rand(g.shape[0], dtype=torch.float64 if dtype == torch.float64 else torch.float32) + 0.5
    both = run(backend, g.to(device), v.to(device), up.to(device), p, t, one_sided, WEIGHT, 1.0)
    alone = run(backend, g[:3].to(device), v[:3].to(device), up[:3].to(device), p, t, one_sided, WEIGHT, 1.0)
    for x, y in zip(both, alone):
        assert torch.equal(x[:3], y), (p, t, one_sided)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_nan_and_inf_still_propagate(backend, device, dtype):
    """A NaN or an inf in a gradient row (fp16 overflow under AMP) reaches that row's gradient (and, but for
    p = 2 with t = 0, whose second derivative 2 w s^2 is constant, its double backward) as NaN/inf, whether the
    other elements are tiny, moderate or huge (the rescued sums included), so that GradScaler skips the step;
    the other rows stay finite."""
    require(backend, device)
    for p in (2.0, 6.0):
        for t in (0.0, 1.0):
            g = make_rows(dtype, [1e-30 if dtype == torch.float32 else 1e-200, 0.5, 1e25, 1.5])
            g[0, 2] = float("inf")
            g[1, 4] = float("nan")
            g[2, 1] = float("-inf")
            g[3, 0] = float("nan")
            v = torch.randn(g.shape, dtype=dtype)
            up = torch.ones(g.shape[0], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
            values, norms, dg, hv, _ = run(backend, g.to(device), v.to(device), up.to(device), p, t, False, WEIGHT,
                                           1.0)
            for i in range(4):
                assert not torch.isfinite(dg[i]).all(), (p, t, i)
                if not (p == 2 and t == 0):
                    assert not torch.isfinite(hv[i]).all(), (p, t, i)
            for i in (4, 6):  # the zero row and the mixed one (0.75)
                assert torch.isfinite(dg[i]).all() and torch.isfinite(hv[i]).all(), (p, t, i)
