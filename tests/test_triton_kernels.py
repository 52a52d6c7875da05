"""The Triton backend's ops (torch.ops.gpkernels_triton.*, gpkernels/backends/triton/) on (B, N) rows against
float64 torch references: every dtype, the option combinations, long rows that take several chunks, zero rows,
determinism. They run on CPU tensors under the Triton interpreter (conftest switches it on where there is no
GPU); on a GPU machine the same ops are covered on CUDA tensors by the backend-parametrised suites
(test_penalty, test_interpolate), so this module skips there. Input checks: test_errors.
"""
import pytest
import torch

import gpkernels
from gpkernels.backends.triton import _kernels as K

OPS = torch.ops.gpkernels_triton
pytestmark = pytest.mark.skipif(bool(gpkernels.backends.refusals("triton", "cpu")),
                                reason="the Triton backend does not serve CPU tensors here (no interpreter)")

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Tolerance for results stored in the rows' dtype, and for results in the accumulation dtype.
ROW_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
ACC_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
SHAPES = [(1, 1), (3, 7), (4, 1000), (2, 100003), (5, 0)]
BIG = (2, 100003)
WEIGHT = 10.0
# (target, one_sided, inv_scale): every combination on the small shapes, two on the long rows (the per-row
# math does not depend on N; the long rows exercise the chunked reduction, which the options do not touch).
OPTIONS = [(t, o, s) for t in (0.0, 1.0) for o in (False, True) for s in (1.0, 1.0 / 1024)]
BIG_OPTIONS = [(1.0, False, 1.0), (0.0, True, 1.0 / 1024)]
PENALTY_CASES = [(shape, opt) for shape in SHAPES for opt in (BIG_OPTIONS if shape == BIG else OPTIONS)]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ids(case):
    (B, N), (t, o, s) = case
    return f"{B}x{N}-t{t:g}-{'one' if o else 'two'}-s{s:g}"


def assert_close(actual, ref, tol, scale, what):
    """|actual - ref| <= tol * (|ref| + scale) + one subnormal step of actual's dtype, elementwise, in float64
    (the step covers fp16 results that underflow); no NaN anywhere."""
    finfo = torch.finfo(actual.dtype)
    step = finfo.tiny * finfo.eps
    actual = actual.double()
    assert not torch.isnan(actual).any(), f"{what}: NaN"
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    err = (actual - ref).abs()
    bound = tol * (ref.abs() + scale) + step
    bad = err > bound
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} mismatches; first at {i}: got {actual[tuple(i)].item()!r}, "
                             f"expected {ref[tuple(i)].item()!r} (tol {bound[tuple(i)].item():.3g})")


# ----------------------------------------------------------------------------------------------------------
# float64 references (the formulas of penalty_math.h, written plainly)
# ----------------------------------------------------------------------------------------------------------


def ref_coefs(norm, t, o, w, s):
    """c_i and k_i of penalty_math.h from float64 norms n_i = s ||g_i||."""
    d = norm - t
    if o:
        d = d.clamp(min=0.0)
    pos = norm > 0
    safe = torch.where(pos, norm, torch.ones_like(norm))
    c = torch.where(pos, 2 * w * s * d * (s / safe), torch.zeros_like(norm))
    if t == 0:
        c = torch.full_like(norm, 2 * w * s * s)
    live = pos & (norm > t) if o else pos
    k = torch.where(live, 2 * w * t * s * (s / safe) ** 3, torch.zeros_like(norm))
    if t == 0:
        k = torch.zeros_like(norm)
    return c, k


def make_rows(B, N, dtype, s, seed):
    """Gradient rows with s*||g_i|| spread over [0.4, 1.8] (never exactly at a target of 1); when B >= 3,
    row 0 is all zeros and row 1 has s*||g_1|| = 0.5, below a target of 1."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(B, N, generator=gen, dtype=torch.float64)
    g = g / g.norm(dim=1, keepdim=True).clamp(min=1e-300)
    scale = torch.linspace(0.4, 1.8, B, dtype=torch.float64) if B > 1 else torch.tensor([1.3], dtype=torch.float64)
    if B >= 3:
        scale[0] = 0.0
        scale[1] = 0.5
    return (g * scale[:, None] / s).to(dtype)


# ----------------------------------------------------------------------------------------------------------
# interp / interp_backward
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_interp(shape, dtype):
    B, N = shape
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(B, N, generator=gen, dtype=torch.float64).to(dtype)
    fake = (torch.randn(B, N, generator=gen, dtype=torch.float64) * 3).to(dtype)
    alpha = torch.rand(B, generator=gen, dtype=torch.float64).to(dtype)
    a = alpha.double()[:, None]
    r, f = real.double(), fake.double()

    out = OPS.interp(real, fake, alpha)
    assert out.dtype == dtype and out.shape == (B, N)
    assert_close(out, a * r + (1 - a) * f, ROW_TOL[dtype], (a * r).abs() + ((1 - a) * f).abs(), "interp")
    if dtype != torch.float64:
        # Same operations in fp32 as torch, rounded to nearest-even once: bitwise equal (bf16 included, which
        # needs the interpreter workaround, see the module docstring).
        af = alpha.float()[:, None]
        expect = (af * real.float() + (1 - af) * fake.float()).to(dtype)
        assert torch.equal(out.view(torch.int16), expect.view(torch.int16))

    grad = torch.randn(B, N, generator=gen, dtype=torch.float64).to(dtype)
    gx = grad.double()
    g_real, g_fake, g_alpha = OPS.interp_backward(grad, real, fake, alpha)
    assert g_real.dtype == g_fake.dtype == g_alpha.dtype == dtype
    assert g_alpha.shape == (B,)
    tol = ROW_TOL[dtype]
    assert_close(g_real, a * gx, tol, 0.0, "g_real")
    assert_close(g_fake, (1 - a) * gx, tol, 0.0, "g_fake")
    terms = (r - f) * gx
    assert_close(g_alpha, terms.sum(1), tol, terms.norm(dim=1), "g_alpha")


# ----------------------------------------------------------------------------------------------------------
# penalty_forward / penalty_backward / penalty_double_backward
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PENALTY_CASES, ids=_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_penalty(case, dtype):
    (B, N), (t, o, s) = case
    w = WEIGHT
    acc = _acc(dtype)
    row_tol, acc_tol = ROW_TOL[dtype], ACC_TOL[dtype]
    grads = make_rows(B, N, dtype, s, seed=2)
    g = grads.double()
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(B, N, generator=gen, dtype=torch.float64).to(dtype)
    vv = v.double()
    gout = torch.empty(B, dtype=torch.float64).uniform_(0.5, 2.0, generator=gen)
    gout[-1] = -gout[-1]
    gout = gout.to(acc)
    go = gout.double()

    # Forward.
    n_ref = s * g.norm(dim=1)
    d_ref = (n_ref - t).clamp(min=0.0) if o else n_ref - t
    values, norms = OPS.penalty_forward(grads, t, o, w, s, 2.0)
    assert values.dtype == norms.dtype == acc and values.shape == norms.shape == (B,)
    assert_close(norms, n_ref, acc_tol, 0.0, "norms")
    assert_close(values, w * d_ref * d_ref, acc_tol, w * (n_ref + t) ** 2, "values")

    # Backward, from the kernel's own norms (as the op does).
    c_ref, k_ref = ref_coefs(n_ref, t, o, w, s)
    c_scale = torch.full_like(n_ref, 2 * w * s * s) if t == 0 else \
        2 * w * s * (n_ref + t) * s / torch.where(n_ref > 0, n_ref, torch.ones_like(n_ref))
    dgrads = OPS.penalty_backward(gout, grads, norms, t, o, w, s, 2.0)
    assert dgrads.dtype == dtype and dgrads.shape == (B, N)
    assert_close(dgrads, (go * c_ref)[:, None] * g, row_tol, (go.abs() * c_scale)[:, None] * g.abs(), "dgrads")

    # Double backward.
    dot = (g * vv).sum(1)
    dot_scale = g.norm(dim=1) * vv.norm(dim=1)
    d_gout, d_grads = OPS.penalty_double_backward(v, gout, grads, t, o, w, s, 2.0)
    assert d_gout.dtype == acc and d_gout.shape == (B,)
    assert d_grads.dtype == dtype and d_grads.shape == (B, N)
    assert_close(d_gout, c_ref * dot, acc_tol, c_scale * dot_scale, "d_gout")
    ref = go[:, None] * (c_ref[:, None] * vv + (k_ref * dot)[:, None] * g)
    scale = go.abs()[:, None] * (c_scale[:, None] * vv.abs() + (k_ref.abs() * dot_scale)[:, None] * g.abs())
    assert_close(d_grads, ref, row_tol, scale, "d_grads")

    # The special rows, exactly.
    if B >= 3 and N > 0:
        # Row 0 is all zeros: norm 0; c = 2 w s^2 when t == 0, else 0; k = 0; no NaN anywhere.
        assert norms[0].item() == 0.0
        c0 = 2 * w * s * s if t == 0 else 0.0
        assert values[0].item() == (0.0 if o else w * t * t)
        assert torch.all(dgrads[0] == 0)
        assert d_gout[0].item() == 0.0
        expect0 = (gout[0].double() * c0 * vv[0]).to(dtype)  # d_grads_0 = gout_0 * c_0 * v_0
        assert_close(d_grads[0], expect0.double(), row_tol, 0.0, "d_grads zero row")
        if t == 0:
            assert d_grads[0].abs().max().item() > 0  # the t == 0 coefficient really is 2 w s^2 there
        else:
            assert torch.all(d_grads[0] == 0)
        if o and t > 0:
            # Row 1 has norm 0.5 < t: one-sided, no penalty and no gradient, c = k = 0.
            assert norms[1].item() < t
            assert values[1].item() == 0.0
            assert torch.all(dgrads[1] == 0)
            assert d_gout[1].item() == 0.0
            assert torch.all(d_grads[1] == 0)
    if N == 0:
        assert torch.all(norms == 0)
        assert torch.all(d_gout == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_rows_all_options(dtype):
    """Every row zero (the degenerate input): finite outputs with the documented coefficients."""
    B, N = 3, 5
    acc = _acc(dtype)
    grads = torch.zeros(B, N, dtype=dtype)
    v = torch.ones(B, N, dtype=dtype)
    gout = torch.ones(B, dtype=acc)
    for t, o, s in OPTIONS:
        values, norms = OPS.penalty_forward(grads, t, o, WEIGHT, s, 2.0)
        assert torch.all(norms == 0)
        assert torch.all(values == (0.0 if o else WEIGHT * t * t))
        dgrads = OPS.penalty_backward(gout, grads, norms, t, o, WEIGHT, s, 2.0)
        assert torch.all(dgrads == 0)
        d_gout, d_grads = OPS.penalty_double_backward(v, gout, grads, t, o, WEIGHT, s, 2.0)
        assert torch.all(d_gout == 0)
        c = 2 * WEIGHT * s * s if t == 0 else 0.0
        assert torch.equal(d_grads, torch.full((B, N), c, dtype=torch.float64).to(dtype))


def test_one_sided_below_target():
    """One-sided, every norm below the target: zero values and zero gradients of both orders."""
    grads = make_rows(4, 64, torch.float32, 1.0, seed=4) * 0.3  # norms <= 0.54 < 1
    v = torch.randn(4, 64)
    gout = torch.ones(4)
    values, norms = OPS.penalty_forward(grads, 1.0, True, WEIGHT, 1.0, 2.0)
    assert torch.all(norms < 1.0) and torch.all(values == 0)
    assert torch.all(OPS.penalty_backward(gout, grads, norms, 1.0, True, WEIGHT, 1.0, 2.0) == 0)
    d_gout, d_grads = OPS.penalty_double_backward(v, gout, grads, 1.0, True, WEIGHT, 1.0, 2.0)
    assert torch.all(d_gout == 0) and torch.all(d_grads == 0)
    # Two-sided, the same rows are penalised.
    values2, _ = OPS.penalty_forward(grads, 1.0, False, WEIGHT, 1.0, 2.0)
    assert torch.all(values2 > 0)


# ----------------------------------------------------------------------------------------------------------
# Launch planning, determinism, validation
# ----------------------------------------------------------------------------------------------------------


def test_long_rows_use_several_chunks():
    block, chunk, nchunks, _ = K._plan(*BIG, torch.device("cpu"))
    assert nchunks > 1, "the (2, 100003) cases should exercise the multi-chunk reduction"
    assert chunk % block == 0 and (nchunks - 1) * chunk < BIG[1] <= nchunks * chunk


def test_gpu_plan(monkeypatch):
    """The GPU launch plan (pure Python): power-of-two blocks, full coverage, grid limits, many programs."""
    monkeypatch.setattr(K, "INTERPRETED", False)
    monkeypatch.setattr(K, "_sm_count", lambda index: 132)
    dev = torch.device("cuda", 0)
    for B, N in [(1, 1), (1, 10**6), (64, 3 * 64 * 64), (1024, 784), (7, 2**33 + 5), (10**6, 3), (3, 0)]:
        block, chunk, nchunks, num_warps = K._plan(B, N, dev)
        assert block & (block - 1) == 0 and 64 <= block <= 1024 and 1 <= num_warps <= 4
        if N == 0:
            assert nchunks == 0
            continue
        assert chunk % block == 0 and (nchunks - 1) * chunk < N <= nchunks * chunk
        assert 1 <= nchunks <= 65535
    assert K._plan(1, 10**6, dev)[2] >= 100  # one long row still spreads over the SMs


def test_deterministic():
    grads = make_rows(*BIG, torch.float32, 1.0, seed=5)
    v = torch.randn(*BIG)
    a = OPS.penalty_forward(grads, 1.0, False, WEIGHT, 1.0, 2.0)
    b = OPS.penalty_forward(grads, 1.0, False, WEIGHT, 1.0, 2.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    gout = torch.ones(BIG[0])
    a = OPS.penalty_double_backward(v, gout, grads, 1.0, False, WEIGHT, 1.0, 2.0)
    b = OPS.penalty_double_backward(v, gout, grads, 1.0, False, WEIGHT, 1.0, 2.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_fp32_scalars_are_rounded_like_the_cpp_kernels():
    """The scalars reach the kernel converted to the acc dtype (float for fp32 rows), as in PenaltyScalars."""
    grads = torch.zeros(1, 3)
    t = 1.0 + 2.0**-30  # not representable in fp32: rounds to 1.0f
    values, _ = OPS.penalty_forward(grads, t, False, 1.0, 1.0, 2.0)
    assert values.item() == 1.0
    values64, _ = OPS.penalty_forward(grads.double(), t, False, 1.0, 1.0, 2.0)
    assert values64.item() == t * t


def test_bf16_rounding_under_the_interpreter():
    """fp32 -> bf16 stores round to nearest-even like torch, ties, overflow, subnormals and NaN included.

    The interpreter's own cast truncates toward zero (triton 3.8: interpreter.py, cast_impl ->
    _convert_float(..., rounding_mode=None)); the kernels round in software there (EMULATE_BF16_RNE).
    """
    import triton.language as tl

    bits = torch.tensor([
        0x3F808000,  # tie, even below: stays 0x3F80
        0x3F818000,  # tie, odd below: rounds up to 0x3F82
        0x3F808001,  # just above a tie: up
        0x3F807FFF,  # just below a tie: down
        0xBF818000,  # negative tie, odd below: away from zero
        0x7F7FFFFF,  # max float: rounds to inf
        0x00012345,  # subnormal
        0x80000000,  # -0.0
        0x7F800000,  # inf
        0x7FC00001,  # NaN
    ], dtype=torch.int64).to(torch.int32)
    x = torch.cat([bits.view(torch.float32), torch.randn(4000)])[None, :].contiguous()
    for emulate in (True, False):
        out = torch.empty(x.shape, dtype=torch.bfloat16)
        N = x.shape[1]
        K._rows_axpby_kernel[(1, 1)](x, x, torch.ones(1), torch.ones(1), out, N, 4096, HAS_Y=False,
                                     B_IS_ONE_MINUS_A=False, ACC=tl.float32, BLOCK=4096, EMULATE_BF16_RNE=emulate)
        expect = x.to(torch.bfloat16)
        same = out.view(torch.int16) == expect.view(torch.int16)
        same |= torch.isnan(out) & torch.isnan(expect)
        if emulate:
            assert same.all(), f"mismatch at {(~same).nonzero()[:5].tolist()}"
        else:
            # What the interpreter's plain cast does (documented, not relied on): about half the values differ.
            print(f"interpreter's plain fp32->bf16 cast: {int((~same).sum())}/{N} values differ from RNE")
