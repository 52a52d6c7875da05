"""The Triton backend's kernels and their launchers, shared by its ops (interp.py, penalty.py hold each
op's launch sequence, registration and autograd). Nothing here checks its inputs: the ops do, once.

Every launcher works on 2-D contiguous "row" tensors of shape (B, N) (sample i = row i, N >= 0) in
float64 / float32 / float16 / bfloat16, and on 1-D per-sample tensors of length B. Arithmetic runs in the
accumulation dtype: float32 for float32/float16/bfloat16 rows, float64 for float64 rows.

The math (one sample i, g_i its gradient row; the same as csrc/common/penalty_math.h, which derives it and
lists the special cases):
    s = inv_scale, t = target >= 0, w = weight >= 0, p = exponent >= 1
    n_i = s * ||g_i||
    d_i = n_i - t                                   (one-sided: max(0, n_i - t))
    value_i = w * |d_i|^p
    phi(d) = |d|^(p-1) sign(d),  phi'(d) = (p-1) |d|^(p-2)
  Backward, upstream gout_i of value_i:
    dvalue_i/dg_i = c_i * g_i,   c_i = w p phi(d_i) s (s / n_i)
    t == 0: c_i = w p s^2 n_i^(p-2) (p == 2: 2 w s^2, smooth there, even at g_i = 0)
    c_i = 0 where n_i == 0 (but for p == 2, t == 0) and where d_i == 0 (p != 2);
    a NaN/inf norm makes c_i NaN on purpose, so that GradScaler sees the overflow and skips the step
  Double backward of B(gout, g) = gout * c(g) * g against an incoming v:
    dB/dgout_i = c_i <g_i, v_i>
    dB/dg_i    = gout_i (c_i v_i + k_i <g_i, v_i> g_i),   k_i = w p s r^2 (s phi'(d_i) - r phi(d_i)), r = s / n_i
    p == 2: k_i = 2 w t s r^3;  t == 0: k_i = w p (p-2) s^4 n_i^(p-4)
    k_i = 0 where n_i == 0, one-sided where n_i <= t, and (p != 2) where d_i == 0
  p == 2 runs today's square formulas (constexpr IS_SQUARE, chosen on the host from p rounded to ACC, as the
  C++ kernels compare the ACC exponent with 2); other p use powers x^y = exp2(y log2 x) (libdevice's pow is
  not available under the interpreter), the integer part of y log2 x in fp64, exact for y in {0, 1}.
  Range (extreme norms; penalty_math.h "Range" has the scheme): rows whose plain sum of squares is 0,
  subnormal or inf take the sum of (2^R g)^2 or (2^-R g)^2 (R = 90 in fp32, 600 in fp64), kept in the same
  pass; the per-row math runs in "wide" arithmetic (a mantissa in [1, 2) and an int32 exponent), bitwise the
  plain formulas wherever those stay normal; a row's multiplier that is not a normal number reaches the
  elementwise kernel as coef * (x * scale), and the double backward at the smallest norms is formed across
  and along g_i / ||g_i|| (gamma, sigma) so that its two overflowing terms never meet.
  Interpolation x = a_i real + (1 - a_i) fake:
    dx/dreal = a_i, dx/dfake = 1 - a_i, dL/da_i = <real_i - fake_i, gx_i>

Kernels (all shared by the ops):
  * ``_row_reduce_kernel``: 2-D grid (row, chunk); each program reduces one chunk of one row into fp32/fp64
    partials [PARTS[mode], B, nchunks] (sums of squares and dot products, plain and rescaled, or
    <real - fake, grad>), loading each input element once; for interp_backward it also writes alpha*grad and
    (1-alpha)*grad in the same pass.
  * ``_rows_finalize_kernel``: 1-D grid over blocks of rows; sums the partials of each row in chunk order
    (deterministic, no atomics) and applies the per-row math (norm, value, c_i, k_i, g_alpha) with the
    ``@triton.jit`` helpers below, which mirror penalty_math.h including its special cases.
  * ``_rows_axpby_kernel``: out = a_i * X + b_i * Y (Y optional), 2-D grid (row, chunk); serves interp
    (a = alpha, b = 1 - alpha computed in-kernel), penalty_backward (a = gout*c, no Y, with its scale) and
    penalty_double_backward (a = gout*c on v, b = gout*k*dot on g, or the projected form).

Offsets are int64 (B*N may exceed 2**31). Launches with an empty grid (N == 0) are skipped.
The penalty scalars reach the finalize kernel as fp64 arguments (annotated ``tl.float64``: an unannotated
Python float is an fp32 argument in compiled Triton, and a raw Python float under the interpreter) and are
rounded to ACC there, as the C++ kernels convert PenaltyScalars; no host-to-device copy per call.
Compiled for NVIDIA, LLVM contracts mul+add into FMA (e.g. a*x + b*y, s*sqrt(.) - t), so GPU results are
not bitwise those of the C++ CPU kernels; the interpreter rounds every operation separately, like them.

Triton interpreter note (TRITON_INTERPRET=1, triton 3.8): its float32 -> bfloat16 cast truncates toward
zero instead of rounding to nearest-even (``interpreter.py``: ``cast_impl`` calls ``_convert_float`` with
rounding_mode=None for ``create_fp_trunc``), so under the interpreter the bf16 stores here round with an
explicit bit-level round-to-nearest-even (EMULATE_BF16_RNE, set to INTERPRETED); compiled kernels use the native cast.
(Its float64 -> bfloat16 cast is wrong outright: ``astype(uint16)`` of the values. No kernel here does it.)
"""
import contextlib
import functools
import struct

import torch
import triton
import triton.language as tl

from ...reference import accum_dtype

# ----------------------------------------------------------------------------------------------------------
# Per-row math, mirroring csrc/common/penalty_math.h. Every argument is a per-row vector (or a scalar) in the
# accumulation dtype. fp32 division and sqrt use the IEEE round-to-nearest forms (tl.div_rn / tl.sqrt_rn),
# since plain `/` and tl.sqrt lower to approximate instructions on NVIDIA GPUs; fp64 `/` and sqrt are IEEE.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _div(x, y):
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def _sqrt(x):
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


# Range (csrc/common/penalty_math.h, "Range"): rows whose plain sum of squares is 0, subnormal or inf take the
# sum of (2^R g)^2 or (2^-R g)^2 instead (summed in the same pass), and the per-row scalars run in "wide"
# arithmetic, a mantissa m in [1, 2) and an int32 exponent e, so nothing over- or underflows in between; products
# and quotients round m exactly as plain arithmetic rounds a normal result, so where the plain formulas stay
# normal the results are bitwise theirs. (The C++ kernels try the plain formulas first; here every row runs the
# wide ones, which cost nothing per element.)


@triton.jit
def _is_finite(x):
    if x.dtype == tl.float64:
        return tl.abs(x) <= 1.7976931348623157e308
    else:
        return tl.abs(x) <= 3.4028234663852886e38


@triton.jit
def _is_normal(x):
    if x.dtype == tl.float64:
        return (tl.abs(x) >= 2.2250738585072014e-308) & _is_finite(x)
    else:
        return (tl.abs(x) >= 1.1754943508222875e-38) & _is_finite(x)


@triton.jit
def _exp2i(k, like):
    # 2^k in like's dtype, for an int32 k within the normal exponents of that dtype.
    if like.dtype == tl.float64:
        return ((k.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)
    else:
        return ((k + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _normal_exponent(k, like):
    # k clamped to the exponents of like's dtype's normal numbers.
    if like.dtype == tl.float64:
        return tl.minimum(tl.maximum(k, -1022), 1023)
    else:
        return tl.minimum(tl.maximum(k, -126), 127)


@triton.jit
def _scalbn(m, k):
    # m 2^k for m with |m| in [1, 2) (or 0, inf, NaN), rounded once: three factors within the normal exponents.
    k1 = _normal_exponent(k, m)
    k2 = _normal_exponent(k - k1, m)
    k3 = _normal_exponent(k - k1 - k2, m)
    return m * _exp2i(k1, m) * _exp2i(k2, m) * _exp2i(k3, m)


@triton.jit
def _wide(x):
    # x = m 2^e exactly, m in [1, 2) with x's sign; 0, inf and NaN as (x, 0).
    if x.dtype == tl.float64:
        tiny = tl.abs(x) < 2.2250738585072014e-308
        y = tl.where(tiny, x * 18014398509481984.0, x)  # 2^54: subnormals become normal
        bits = y.to(tl.int64, bitcast=True)
        be = ((bits >> 52) & 0x7FF).to(tl.int32)
        m = (bits - ((be - 1023).to(tl.int64) << 52)).to(tl.float64, bitcast=True)
        e = be - 1023 - tl.where(tiny, 54, 0)
        special = (x == 0.0) | (be == 0x7FF)
    else:
        tiny = tl.abs(x) < 1.1754943508222875e-38
        y = tl.where(tiny, x * 16777216.0, x)  # 2^24
        bits = y.to(tl.int32, bitcast=True)
        be = (bits >> 23) & 0xFF
        m = (bits - ((be - 127) << 23)).to(tl.float32, bitcast=True)
        e = be - 127 - tl.where(tiny, 24, 0)
        special = (x == 0.0) | (be == 0xFF)
    return tl.where(special, x, m), tl.where(special, 0, e)


@triton.jit
def _wmul(am, ae, bm, be):
    m = am * bm
    big = tl.abs(m) >= 2.0
    return tl.where(big, m * 0.5, m), ae + be + big.to(tl.int32)


@triton.jit
def _wdiv(am, ae, bm, be):
    m = _div(am, bm)
    small = (tl.abs(m) < 1.0) & (m != 0.0)
    return tl.where(small, m * 2.0, m), ae - be - small.to(tl.int32)


@triton.jit
def _wsub(am, ae, bm, be):
    # Aligned on the larger exponent (a zero operand takes the other's); the smaller operand may round away.
    e = tl.maximum(tl.where(am == 0.0, be, ae), tl.where(bm == 0.0, ae, be))
    vm, ve = _wide(_scalbn(am, ae - e) - _scalbn(bm, be - e))
    return vm, ve + e


@triton.jit
def _wneg_if(cond, m, e):
    return tl.where(cond, -m, m), e


@triton.jit
def _wsel(cond, am, ae, bm, be):
    return tl.where(cond, am, bm), tl.where(cond, ae, be)


@triton.jit
def _wpow(xm, xe, y):
    # x^y for x = xm 2^xe >= 0 (NaN passes on) as 2^(y log2 x), the exponent's integer part in fp64 so that only
    # its fraction is rounded in ACC; exact for y == 0 (1, as C's pow, NaN included) and y == 1.
    fin = _is_finite(xm) & (xm != 0.0)
    L = y.to(tl.float64) * xe.to(tl.float64) + (y * tl.log2(tl.where(fin, xm, 1.0))).to(tl.float64)
    L = tl.minimum(tl.maximum(L, -1.0e6), 1.0e6)  # beyond any exponent: 0 or inf either way
    k = tl.floor(L)
    m = tl.exp2((L - k).to(xm.dtype))
    e = k.to(tl.int32)
    big = m >= 2.0
    m = tl.where(big, m * 0.5, m)
    e = e + big.to(tl.int32)
    # 0^y and inf^y (y != 0): 0 or inf as the sign of y says; NaN stays NaN.
    edge = tl.where(xm == 0.0, tl.where(y > 0.0, 0.0, float("inf")), tl.where(y > 0.0, xm, 0.0))
    m = tl.where(fin, m, tl.where(xm != xm, xm, edge))
    e = tl.where(fin, e, 0)
    m = tl.where(y == 1.0, xm, m)
    e = tl.where(y == 1.0, xe, e)
    return tl.where(y == 0.0, 1.0, m), tl.where(y == 0.0, 0, e)


@triton.jit
def _wsplit(m, e):
    # A per-row multiplier m 2^e as (coef, scale), applied as coef * (x * scale): scale = 1 where m 2^e is a normal
    # number (or 0, inf, NaN); else a power of two with coef in [1, 2) (too large) or [1/2, 1) (too small).
    plain = _scalbn(m, e)
    keep = (m == 0.0) | (~_is_finite(m)) | _is_normal(plain)
    q = _normal_exponent(tl.where(e > 0, e, e + 1), m)
    return tl.where(keep, plain, _scalbn(m, e - q)), tl.where(keep, 1.0, _exp2i(q, m))


@triton.jit
def _rescue_shift(m):
    # R of the rescue factors 2^R and 2^-R.
    if m.dtype == tl.float64:
        return 600
    else:
        return 90


@triton.jit
def _row_norm(sumsq, sumsq_up, sumsq_down, s):
    # n_i = s * ||g_i|| (plain where the plain sum of squares is a normal number, NaN included), and n_i wide.
    up = (sumsq == sumsq) & ~_is_normal(sumsq) & _is_finite(sumsq)  # 0 or subnormal: the squares underflowed
    down = (sumsq == sumsq) & ~_is_finite(sumsq)  # inf: they overflowed
    root = _sqrt(tl.where(up, sumsq_up, tl.where(down, sumsq_down, sumsq)))
    sm, se = _wide(s)
    rm, re = _wide(root)
    nm, ne = _wmul(sm, se, rm, re)
    ne = ne - tl.where(up, _rescue_shift(nm), tl.where(down, -_rescue_shift(nm), 0))
    norm = tl.where(up | down, _scalbn(nm, ne), s * root)
    return norm, nm, ne, up, down


@triton.jit
def _row_dot(dot, dot_up, dot_down, up, down):
    # <g_i, v_i> wide: from the rescued sum where the row was rescued (unless that overflowed: v huge).
    scaled = tl.where(up, dot_up, dot_down)
    use = (up | down) & _is_finite(scaled)
    m, e = _wide(tl.where(use, scaled, dot))
    return m, e - tl.where(use & up, _rescue_shift(m), tl.where(use & down, -_rescue_shift(m), 0))


@triton.jit
def _row_excess(norm, t, ONE_SIDED: tl.constexpr):
    # d_i = n_i - t, clamped at 0 in the one-sided form.
    d = norm - t
    if ONE_SIDED:
        d = tl.where(d < 0.0, 0.0, d)
    return d


@triton.jit
def _odd_power(d, p):
    # phi(d) = |d|^(p-1) sign(d), wide; 0 at d == 0 (p == 1 included). NaN passes on.
    am, ae = _wide(tl.where(d == 0.0, 1.0, tl.abs(d)))  # (finite in the lanes set to 0 below)
    m, e = _wpow(am, ae, p - 1.0)
    m, e = _wneg_if(d < 0.0, m, e)
    return tl.where(d == 0.0, 0.0, m), tl.where(d == 0.0, 0, e)


@triton.jit
def _odd_power_slope(d, p):
    # phi'(d) = (p-1) |d|^(p-2), wide; 0 at d == 0 (infinite there for p < 2, taken as 0). NaN passes on.
    am, ae = _wide(tl.where(d == 0.0, 1.0, tl.abs(d)))
    m, e = _wpow(am, ae, p - 2.0)
    cm, ce = _wide(p - 1.0)
    m, e = _wmul(cm, ce, m, e)
    return tl.where(d == 0.0, 0.0, m), tl.where(d == 0.0, 0, e)


@triton.jit
def _row_value(norm, nm, ne, t, w, p, ONE_SIDED: tl.constexpr, IS_SQUARE: tl.constexpr):
    # value_i = w * |d_i|^p (w * d_i^2 for p == 2, plain: it over- or underflows only where the value does).
    d = _row_excess(norm, t, ONE_SIDED)
    if IS_SQUARE:
        return w * d * d
    else:
        am, ae = _wide(tl.abs(d))
        am, ae = _wsel((t == 0.0) & (d != 0.0), nm, ne, am, ae)  # d = n_i: its wide form
        vm, ve = _wpow(am, ae, p)
        wm, we = _wide(w)
        vm, ve = _wmul(wm, we, vm, ve)
        return _scalbn(vm, ve)


@triton.jit
def _row_grad_coef(norm, nm, ne, t, w, s, p, ONE_SIDED: tl.constexpr, IS_SQUARE: tl.constexpr):
    # c_i, wide (norm: n_i rounded, for d_i and the special cases; (nm, ne): n_i wide). c_i = w p phi(d_i) s (s / n_i);
    # t == 0: w p s^2 n_i^(p-2); 0 where n_i == 0. p == 2: 2 w s d_i (s / n_i), 2 w s^2 where t == 0 (even at
    # n_i == 0). A NaN norm stays NaN so that GradScaler sees a non-finite inner gradient in the parameter
    # gradients.
    pos = norm != 0.0
    d = _row_excess(norm, t, ONE_SIDED)
    sm, se = _wide(s)
    wm, we = _wide(w)
    rm, re = _wdiv(sm, se, tl.where(pos, nm, 1.0), ne)  # s / n_i (kept finite where n_i == 0, unused there)
    if IS_SQUARE:
        c0m, c0e = _wmul(wm, we + 1, sm, se)  # 2 w s
        c1m, c1e = _wide(d)
        c1m, c1e = _wmul(c0m, c0e, c1m, c1e)
        c1m, c1e = _wmul(c1m, c1e, rm, re)
        c0m, c0e = _wmul(c0m, c0e, sm, se)
        c1m, c1e = _wsel(pos, c1m, c1e, 0.0, 0)
        return _wsel(t == 0.0, c0m, c0e, c1m, c1e)
    else:
        pm, pe = _wide(p)
        wpm, wpe = _wmul(wm, we, pm, pe)
        xm, xe = _wmul(wpm, wpe, sm, se)  # w p s
        c0m, c0e = _wmul(xm, xe, sm, se)
        qm, qe = _wpow(tl.where(nm == 0.0, 1.0, nm), ne, p - 2.0)  # (unused where n_i == 0)
        c0m, c0e = _wmul(c0m, c0e, qm, qe)
        fm, fe = _odd_power(d, p)
        c1m, c1e = _wmul(xm, xe, fm, fe)
        c1m, c1e = _wmul(c1m, c1e, rm, re)
        cm, ce = _wsel(t == 0.0, c0m, c0e, c1m, c1e)
        return _wsel(pos, cm, ce, 0.0, 0)


@triton.jit
def _row_second_coef(norm, nm, ne, t, w, s, p, ONE_SIDED: tl.constexpr, IS_SQUARE: tl.constexpr):
    # k_i, wide: w p s r^2 (s phi'(d_i) - r phi(d_i)) with r = s / n_i; t == 0: w p (p-2) s^4 n_i^(p-4); p == 2:
    # 2 w t s r^3 (0 where t == 0). 0 where n_i == 0 and one-sided where n_i <= t (NaN passes on, as in
    # _row_grad_coef).
    pos = norm != 0.0
    sm, se = _wide(s)
    wm, we = _wide(w)
    rm, re = _wdiv(sm, se, tl.where(pos, nm, 1.0), ne)
    if IS_SQUARE:
        tm, te = _wide(t)
        km, ke = _wmul(wm, we + 1, tm, te)  # 2 w t
        km, ke = _wmul(km, ke, sm, se)
        km, ke = _wmul(km, ke, rm, re)
        km, ke = _wmul(km, ke, rm, re)
        km, ke = _wmul(km, ke, rm, re)
        live = pos & (t != 0.0)
    else:
        pm, pe = _wide(p)
        wpm, wpe = _wmul(wm, we, pm, pe)
        am, ae = _wide(p - 2.0)
        k0m, k0e = _wmul(wpm, wpe, am, ae)
        s2m, s2e = _wmul(sm, se, sm, se)
        k0m, k0e = _wmul(k0m, k0e, s2m, s2e)
        k0m, k0e = _wmul(k0m, k0e, s2m, s2e)
        qm, qe = _wpow(tl.where(nm == 0.0, 1.0, nm), ne, p - 4.0)
        k0m, k0e = _wmul(k0m, k0e, qm, qe)
        d = _row_excess(norm, t, ONE_SIDED)
        k1m, k1e = _wmul(wpm, wpe, sm, se)
        k1m, k1e = _wmul(k1m, k1e, rm, re)
        k1m, k1e = _wmul(k1m, k1e, rm, re)
        um, ue = _odd_power_slope(d, p)
        um, ue = _wmul(sm, se, um, ue)
        vm, ve = _odd_power(d, p)
        vm, ve = _wmul(rm, re, vm, ve)
        um, ue = _wsub(um, ue, vm, ve)
        k1m, k1e = _wmul(k1m, k1e, um, ue)
        km, ke = _wsel(t == 0.0, k0m, k0e, k1m, k1e)
        live = pos
    if ONE_SIDED:
        live = live & ((norm > t) | (norm != norm))
    return _wsel(live, km, ke, 0.0, 0)


@triton.jit
def _row_along_coef(norm, nm, ne, t, w, s, p, ONE_SIDED: tl.constexpr, IS_SQUARE: tl.constexpr):
    # kappa_i = c_i + k_i ||g_i||^2 = w p s^2 phi'(d_i) (p == 2: 2 w s^2), wide; c_i where k_i is 0 by a special
    # case (penalty_math.h, along_coef_formula).
    k_zero = norm == 0.0
    if ONE_SIDED:
        k_zero = k_zero | (norm <= t)
    cm, ce = _row_grad_coef(norm, nm, ne, t, w, s, p, ONE_SIDED, IS_SQUARE)
    sm, se = _wide(s)
    wm, we = _wide(w)
    if IS_SQUARE:
        km, ke = _wmul(wm, we + 1, sm, se)
        km, ke = _wmul(km, ke, sm, se)
        k_zero = k_zero | (t == 0.0)
    else:
        pm, pe = _wide(p)
        wpm, wpe = _wmul(wm, we, pm, pe)
        xm, xe = _wmul(wpm, wpe, sm, se)
        xm, xe = _wmul(xm, xe, sm, se)  # w p s^2
        am, ae = _wide(p - 1.0)
        k0m, k0e = _wmul(xm, xe, am, ae)
        qm, qe = _wpow(tl.where(nm == 0.0, 1.0, nm), ne, p - 2.0)  # (unused where n_i == 0)
        k0m, k0e = _wmul(k0m, k0e, qm, qe)
        um, ue = _odd_power_slope(_row_excess(norm, t, ONE_SIDED), p)
        k1m, k1e = _wmul(xm, xe, um, ue)
        km, ke = _wsel(t == 0.0, k0m, k0e, k1m, k1e)
    return _wsel(k_zero, cm, ce, km, ke)


@triton.jit
def _plain_multiplier(m, e):
    # m 2^e needs no scale: a normal number, 0, inf or NaN.
    return (m == 0.0) | (~_is_finite(m)) | _is_normal(_scalbn(m, e))


@triton.jit
def _cast_out(x, DTYPE: tl.constexpr, EMULATE_BF16_RNE: tl.constexpr):
    # Cast an fp32/fp64 value to the output dtype, rounding to nearest-even. Under the interpreter the
    # fp32 -> bf16 cast truncates, so there (EMULATE_BF16_RNE) bf16 is rounded at the bit level.
    if EMULATE_BF16_RNE and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        hi = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        hi = tl.where(x != x, 0x7FC0, hi)  # NaN stays a (quiet) NaN
        return hi.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _program_span(N, CHUNK, BLOCK: tl.constexpr):
    # The (row, chunk) program's share of a (B, N) row tensor: its row, the row's first element (int64: B*N
    # may exceed 2**31), the chunk's first column, the chunk's length (the last chunk of a row may be short)
    # and the lanes of one vector step.
    row = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1).to(tl.int64) * CHUNK
    return row, row * N, start, tl.minimum(N - start, CHUNK), tl.arange(0, BLOCK)


# Parts (q = 2^R, r = 2^-R: the rescue factors, see "Range" above)
RED_SUMSQ = 0  # sum g^2, sum (q g)^2, sum (r g)^2                                         (penalty_forward)
RED_SUMSQ_DOT = 1  # sum g^2, sum g*v, sum (q g)^2, sum (q g)*v, sum (r g)^2, sum (r g)*v (penalty_double_backward)
RED_INTERP = 2  # sum (real - fake)*grad, + alpha-scaled grads                           (interp_backward)
PARTS = {RED_SUMSQ: 3, RED_SUMSQ_DOT: 6, RED_INTERP: 1}


@triton.jit
def _row_reduce_kernel(
    x_ptr,  # (B, N) rows: grads (SUMSQ, SUMSQ_DOT) or the incoming grad (INTERP)
    y_ptr,  # (B, N) rows: v (SUMSQ_DOT) or real (INTERP); unused for SUMSQ
    z_ptr,  # (B, N) rows: fake (INTERP); unused otherwise
    alpha_ptr,  # (B,) alpha in the rows' dtype (INTERP); unused otherwise
    out_y_ptr,  # (B, N) rows out: g_real = alpha*grad (INTERP); unused otherwise
    out_z_ptr,  # (B, N) rows out: g_fake = (1 - alpha)*grad (INTERP); unused otherwise
    part_ptr,  # [NPARTS, B, nchunks] partial sums in the accumulation dtype, written once per program
    N,  # elements per row
    CHUNK,  # elements per (row, chunk) program, a multiple of BLOCK
    nchunks,  # chunks per row (grid axis 1)
    part_stride,  # B * nchunks: distance between the partial planes
    MODE: tl.constexpr,  # RED_SUMSQ, RED_SUMSQ_DOT or RED_INTERP
    ACC: tl.constexpr,  # accumulation dtype, tl.float32 or tl.float64
    BLOCK: tl.constexpr,  # elements per vector step, a power of two
    EMULATE_BF16_RNE: tl.constexpr,  # round bf16 stores in software (interpreter only)
):
    row, row_off, start, n_here, lanes = _program_span(N, CHUNK, BLOCK)
    acc0 = tl.zeros([BLOCK], dtype=ACC)
    acc1 = tl.zeros([BLOCK], dtype=ACC)
    acc_up = tl.zeros([BLOCK], dtype=ACC)
    acc_up1 = tl.zeros([BLOCK], dtype=ACC)
    acc_dn = tl.zeros([BLOCK], dtype=ACC)
    acc_dn1 = tl.zeros([BLOCK], dtype=ACC)
    # Rows rescued upward have every |g| below 2^-63 (float32; 2^-511 in float64): larger elements are left out of
    # that sum, which then stays finite (no overflow in any row; the interpreter would warn).
    if ACC == tl.float64:
        up_f = 4.149515568880993e+180  # 2^600
        dn_f = 2.409919865102884e-181  # 2^-600
        up_below = 1.4916681462400413e-154  # 2^-511
    else:
        up_f = 1.2379400392853803e+27  # 2^90
        dn_f = 8.077935669463161e-28  # 2^-90
        up_below = 1.0842021724855044e-19  # 2^-63
    if MODE == 2:
        a = tl.load(alpha_ptr + row).to(ACC)
        one_minus_a = 1.0 - a
    for it in range(0, n_here, BLOCK):
        col = start + it + lanes
        mask = col < N
        offs = row_off + col
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if MODE == 0:
            acc0 += x * x
            xu = tl.where(tl.abs(x) < up_below, x, 0.0) * up_f
            xd = x * dn_f
            acc_up += xu * xu
            acc_dn += xd * xd
        elif MODE == 1:
            y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
            acc0 += x * x
            acc1 += x * y
            xu = tl.where(tl.abs(x) < up_below, x, 0.0) * up_f
            xd = x * dn_f
            acc_up += xu * xu
            acc_up1 += xu * y
            acc_dn += xd * xd
            acc_dn1 += xd * y
        else:
            r = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
            f = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
            acc0 += (r - f) * x
            tl.store(out_y_ptr + offs, _cast_out(a * x, out_y_ptr.dtype.element_ty, EMULATE_BF16_RNE), mask=mask)
            tl.store(out_z_ptr + offs, _cast_out(one_minus_a * x, out_z_ptr.dtype.element_ty, EMULATE_BF16_RNE),
                     mask=mask)
    pidx = row * nchunks + tl.program_id(1)
    tl.store(part_ptr + pidx, tl.sum(acc0, axis=0))
    if MODE == 0:
        tl.store(part_ptr + part_stride + pidx, tl.sum(acc_up, axis=0))
        tl.store(part_ptr + 2 * part_stride + pidx, tl.sum(acc_dn, axis=0))
    elif MODE == 1:
        tl.store(part_ptr + part_stride + pidx, tl.sum(acc1, axis=0))
        tl.store(part_ptr + 2 * part_stride + pidx, tl.sum(acc_up, axis=0))
        tl.store(part_ptr + 3 * part_stride + pidx, tl.sum(acc_up1, axis=0))
        tl.store(part_ptr + 4 * part_stride + pidx, tl.sum(acc_dn, axis=0))
        tl.store(part_ptr + 5 * part_stride + pidx, tl.sum(acc_dn1, axis=0))


FIN_FORWARD = 0  # norms_i, values_i from the RED_SUMSQ parts
FIN_BACKWARD = 1  # a_i = gout_i * c(norms_i) as (coef, scale), no partials
FIN_DOUBLE = 2  # a_i = gout_i c_i, b_i = gout_i k_i dot_i (each as (coef, scale)), d_gout_i = c_i dot_i
FIN_ALPHA = 3  # g_alpha_i = sum of the partials, in the rows' dtype


@triton.jit
def _rows_finalize_kernel(
    part_ptr,  # [NPARTS, B, nchunks] partials of _row_reduce_kernel (acc dtype); unused for BACKWARD
    target: tl.float64,  # t >= 0 (fp64 scalar argument, converted to ACC in the kernel)
    weight: tl.float64,  # w >= 0 (fp64 scalar argument, converted to ACC in the kernel)
    inv_scale: tl.float64,  # s > 0 (fp64 scalar argument, converted to ACC in the kernel)
    exponent: tl.float64,  # p >= 1 (fp64 scalar argument, converted to ACC in the kernel)
    norms_ptr,  # (B,) acc dtype: norms written (FORWARD) or read (BACKWARD); unused otherwise
    gout_ptr,  # (B,) acc dtype: upstream gradient of values (BACKWARD, DOUBLE); unused otherwise
    out0_ptr,  # (B,): values (FORWARD), coef of a_i = gout_i c_i (BACKWARD, DOUBLE), g_alpha in rows' dtype (ALPHA)
    out1_ptr,  # (B,) acc dtype: scale of a_i (BACKWARD), b_i = gout_i k_i dot_i (DOUBLE); unused otherwise
    out2_ptr,  # (B,) acc dtype: d_gout_i = c_i dot_i (DOUBLE); unused otherwise
    out3_ptr,  # (B,) acc dtype: scale of a_i (DOUBLE); unused otherwise
    out4_ptr,  # (B,) acc dtype: gamma_i (DOUBLE, penalty_math.h DoubleBackwardTerms); unused otherwise
    out5_ptr,  # (B,) acc dtype: sigma_i (DOUBLE; 0: not projected); unused otherwise
    B,  # rows
    nchunks,  # partials per row (0 when N == 0: the sums are 0)
    part_stride,  # B * nchunks: distance between the partial planes
    MODE: tl.constexpr,  # FIN_FORWARD, FIN_BACKWARD, FIN_DOUBLE or FIN_ALPHA
    ONE_SIDED: tl.constexpr,  # one-sided penalty: d_i = max(0, n_i - t)
    IS_SQUARE: tl.constexpr,  # the exponent, rounded to ACC, is 2: the square formulas
    ACC: tl.constexpr,  # accumulation dtype, tl.float32 or tl.float64
    BLOCK_R: tl.constexpr,  # rows per program, a power of two
    EMULATE_BF16_RNE: tl.constexpr,  # round bf16 stores in software (interpreter only)
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < B
    # Sum the partials of each row in chunk order: deterministic.
    sum0 = tl.zeros([BLOCK_R], dtype=ACC)
    sum1 = tl.zeros([BLOCK_R], dtype=ACC)
    sum2 = tl.zeros([BLOCK_R], dtype=ACC)
    sum3 = tl.zeros([BLOCK_R], dtype=ACC)
    sum4 = tl.zeros([BLOCK_R], dtype=ACC)
    sum5 = tl.zeros([BLOCK_R], dtype=ACC)
    if MODE != 1:
        for j in range(0, nchunks):
            here = part_ptr + rows * nchunks + j
            sum0 += tl.load(here, mask=rmask, other=0.0)
            if MODE == 0 or MODE == 2:
                sum1 += tl.load(here + part_stride, mask=rmask, other=0.0)
                sum2 += tl.load(here + 2 * part_stride, mask=rmask, other=0.0)
            if MODE == 2:
                sum3 += tl.load(here + 3 * part_stride, mask=rmask, other=0.0)
                sum4 += tl.load(here + 4 * part_stride, mask=rmask, other=0.0)
                sum5 += tl.load(here + 5 * part_stride, mask=rmask, other=0.0)
    if MODE == 3:
        tl.store(out0_ptr + rows, _cast_out(sum0, out0_ptr.dtype.element_ty, EMULATE_BF16_RNE), mask=rmask)
    else:
        # The scalars, rounded from double to ACC as the C++ kernels convert PenaltyScalars, and splatted to
        # per-row vectors: besides, the interpreter mis-types a scalar comparison result once it is broadcast
        # against a block (the bool becomes a float array), so every operand of the math below is a block.
        t = tl.full([BLOCK_R], target, ACC)
        w = tl.full([BLOCK_R], weight, ACC)
        s = tl.full([BLOCK_R], inv_scale, ACC)
        p = tl.full([BLOCK_R], exponent, ACC)
        if MODE == 0:
            norm, nm, ne, up, down = _row_norm(sum0, sum1, sum2, s)
            tl.store(norms_ptr + rows, norm, mask=rmask)
            tl.store(out0_ptr + rows, _row_value(norm, nm, ne, t, w, p, ONE_SIDED, IS_SQUARE), mask=rmask)
        elif MODE == 1:
            norm = tl.load(norms_ptr + rows, mask=rmask, other=0.0)
            nm, ne = _wide(norm)
            gm, ge = _wide(tl.load(gout_ptr + rows, mask=rmask, other=0.0))
            cm, ce = _row_grad_coef(norm, nm, ne, t, w, s, p, ONE_SIDED, IS_SQUARE)
            xm, xe = _wmul(gm, ge, cm, ce)
            coef, scale = _wsplit(xm, xe)
            tl.store(out0_ptr + rows, coef, mask=rmask)
            tl.store(out1_ptr + rows, scale, mask=rmask)
        else:
            norm, nm, ne, up, down = _row_norm(sum0, sum2, sum4, s)
            dm, de = _row_dot(sum1, sum3, sum5, up, down)
            gm, ge = _wide(tl.load(gout_ptr + rows, mask=rmask, other=0.0))
            cm, ce = _row_grad_coef(norm, nm, ne, t, w, s, p, ONE_SIDED, IS_SQUARE)
            km, ke = _row_second_coef(norm, nm, ne, t, w, s, p, ONE_SIDED, IS_SQUARE)
            am, ae = _wmul(gm, ge, cm, ce)  # a_i = gout_i c_i
            bm, be = _wmul(gm, ge, km, ke)
            bm, be = _wmul(bm, be, dm, de)  # b_i = gout_i k_i dot_i
            xm, xe = _wmul(cm, ce, dm, de)
            # Where a_i or b_i needs a scale (the smallest norms), d_grads_i is formed across and along u_i =
            # g_i / ||g_i|| (penalty_math.h, DoubleBackwardTerms): sigma = 2^q ~ 1 / ||g_i||, mu = ||g_i|| sigma,
            # gamma = <u_i, v_i> / mu, b = gout_i kappa_i gamma.
            plain = (_plain_multiplier(am, ae) & _plain_multiplier(bm, be)) | (nm == 0.0) | ~_is_finite(nm)
            sm, se = _wide(s)
            lm, le = _wdiv(nm, ne, tl.where(plain, 1.0, sm), se)  # ||g_i|| (where used)
            q = _normal_exponent(-le, lm)
            um, ue = _wdiv(dm, de, tl.where(plain, 1.0, lm), le)
            um, ue = _wdiv(um, ue, tl.where(plain, 1.0, lm), le + q)  # gamma: <g_i, v_i> / (||g_i|| mu)
            km, ke = _row_along_coef(norm, nm, ne, t, w, s, p, ONE_SIDED, IS_SQUARE)
            km, ke = _wmul(gm, ge, km, ke)
            km, ke = _wmul(km, ke, um, ue)
            a_coef, a_scale = _wsplit(am, ae)
            tl.store(out0_ptr + rows, tl.where(plain, _scalbn(am, ae), a_coef), mask=rmask)
            tl.store(out1_ptr + rows, tl.where(plain, _scalbn(bm, be), _scalbn(km, ke)), mask=rmask)
            tl.store(out2_ptr + rows, _scalbn(xm, xe), mask=rmask)
            tl.store(out3_ptr + rows, tl.where(plain, 1.0, a_scale), mask=rmask)
            tl.store(out4_ptr + rows, tl.where(plain, 0.0, _scalbn(um, ue)), mask=rmask)
            tl.store(out5_ptr + rows, tl.where(plain, 0.0, _exp2i(q, um)), mask=rmask)


@triton.jit
def _rows_axpby_kernel(
    x_ptr,  # (B, N) rows X
    y_ptr,  # (B, N) rows Y (HAS_Y); unused otherwise
    a_ptr,  # (B,) per-row a_i, any float dtype (converted to ACC)
    b_ptr,  # (B,) per-row b_i (HAS_Y and not B_IS_ONE_MINUS_A); unused otherwise
    out_ptr,  # (B, N) rows out = a_i X + b_i Y, in out_ptr's dtype
    N,  # elements per row
    CHUNK,  # elements per (row, chunk) program, a multiple of BLOCK
    HAS_Y: tl.constexpr,  # add the b_i Y term
    B_IS_ONE_MINUS_A: tl.constexpr,  # b_i = 1 - a_i, computed in ACC (interp)
    ACC: tl.constexpr,  # accumulation dtype, tl.float32 or tl.float64
    BLOCK: tl.constexpr,  # elements per vector step, a power of two
    EMULATE_BF16_RNE: tl.constexpr,  # round bf16 stores in software (interpreter only)
    qa_ptr=None,  # (B,) per-row scale of X (HAS_SCALE; ACC dtype): out = a_i (X qa_i) [+ b_i Y]
    gamma_ptr=None,  # (B,) (HAS_SCALE and HAS_Y): where sigma_i != 0, out = a_i ((X - gamma_i (Y sigma_i)) qa_i)
    sigma_ptr=None,  # (B,)                           + b_i (Y sigma_i) (penalty_math.h, DoubleBackwardTerms)
    HAS_SCALE: tl.constexpr = False,  # penalty_math.h's Multiplier scales (1 but at extreme norms)
):
    row, row_off, start, n_here, lanes = _program_span(N, CHUNK, BLOCK)
    a = tl.load(a_ptr + row).to(ACC)
    if HAS_Y:
        if B_IS_ONE_MINUS_A:
            b = 1.0 - a
        else:
            b = tl.load(b_ptr + row).to(ACC)
    if HAS_SCALE:
        qa = tl.load(qa_ptr + row).to(ACC)
        if HAS_Y:
            gamma = tl.load(gamma_ptr + row).to(ACC)
            sigma = tl.load(sigma_ptr + row).to(ACC)
    for it in range(0, n_here, BLOCK):
        col = start + it + lanes
        mask = col < N
        offs = row_off + col
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if HAS_SCALE and not HAS_Y:
            x = x * qa  # exact (a multiplication by 1 but at extreme norms)
        out = a * x
        if HAS_Y:
            y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
            out = out + b * y
            if HAS_SCALE:
                ys = y * sigma
                projected = a * ((x - gamma * ys) * qa) + b * ys
                out = tl.where(sigma == 0.0, out, projected)
        tl.store(out_ptr + offs, _cast_out(out, out_ptr.dtype.element_ty, EMULATE_BF16_RNE), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Host side: launch planning and launches
# ----------------------------------------------------------------------------------------------------------

# True when TRITON_INTERPRET=1 was set before this module was imported: the kernels are then Python.
INTERPRETED = type(_rows_axpby_kernel).__name__ == "InterpretedFunction"

_MIN_BLOCK = 64
# GPU: 1024-element vector steps (num_warps 4: 8 elements per thread), and enough (row, chunk) programs to
# fill the SMs when B is small, each still streaming at least _GPU_MIN_CHUNK_BLOCKS blocks.
_GPU_MAX_BLOCK = 1024
_GPU_PROGRAMS_PER_SM = 4
_GPU_MIN_CHUNK_BLOCKS = 4
_MAX_GRID_Y = 65535
# Interpreter: it pays Python overhead per program and per vector op, not per element, so it gets wide
# vectors and few programs (still several chunks per row for long rows, so that path is exercised).
_INTERP_MAX_BLOCK = 8192
_INTERP_PROGRAMS = 8
_INTERP_MIN_CHUNK_BLOCKS = 2
_FIN_MAX_BLOCK_R = 256


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _plan(B: int, N: int, device: torch.device):
    """(BLOCK, CHUNK, nchunks, num_warps) for the (row, chunk) kernels; nchunks == 0 when N == 0."""
    on_gpu = device.type != "cpu" and not INTERPRETED
    max_block = _GPU_MAX_BLOCK if on_gpu else _INTERP_MAX_BLOCK
    block = min(max_block, max(_MIN_BLOCK, _next_pow2(N)))
    num_warps = max(1, min(4, block // 256))
    if N == 0:
        return block, block, 0, num_warps
    if on_gpu:
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = _GPU_PROGRAMS_PER_SM * _sm_count(index)
        min_chunk = _GPU_MIN_CHUNK_BLOCKS * block
    else:
        target = _INTERP_PROGRAMS
        min_chunk = _INTERP_MIN_CHUNK_BLOCKS * block
    nchunks = max(1, min(triton.cdiv(target, B), triton.cdiv(N, min_chunk), _MAX_GRID_Y))
    chunk = triton.cdiv(triton.cdiv(N, nchunks), block) * block
    nchunks = triton.cdiv(N, chunk)  # every chunk non-empty
    return block, chunk, nchunks, num_warps


def _fin_grid(B: int):
    block_r = min(_FIN_MAX_BLOCK_R, max(16, _next_pow2(B)))
    return block_r, (triton.cdiv(B, block_r),)


def on_device(t):
    """Triton launches on the current CUDA device and its current stream: make that the device of the tensors
    (the C++ ops set the same guard), so that tensors on cuda:1 never run with cuda:0 current."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def launch_axpby(x, a, out, y=None, b=None, b_is_one_minus_a=False, qa=None, gamma=None, sigma=None):
    """out = a_i x + b_i y (rows (B, N); y, b optional; b = 1 - a with b_is_one_minus_a); with a per-row scale
    qa: a_i (x qa_i), or with y (and gamma, sigma) penalty_math.h's double_backward_element."""
    B, N = x.shape
    block, chunk, nchunks, num_warps = _plan(B, N, x.device)
    if nchunks == 0:
        return
    has_y = y is not None
    _rows_axpby_kernel[(B, nchunks)](
        x, y if has_y else x, a, b if b is not None else a, out, N, chunk,
        HAS_Y=has_y, B_IS_ONE_MINUS_A=b_is_one_minus_a, ACC=tl_acc(x.dtype), BLOCK=block,
        EMULATE_BF16_RNE=INTERPRETED, qa_ptr=qa if qa is not None else a,
        gamma_ptr=gamma if gamma is not None else a, sigma_ptr=sigma if sigma is not None else a,
        HAS_SCALE=qa is not None, num_warps=num_warps)


def launch_reduce(mode, x, y=None, z=None, alpha=None, out_y=None, out_z=None):
    """Run _row_reduce_kernel; return (partials [PARTS[mode], B, nchunks], nchunks)."""
    B, N = x.shape
    block, chunk, nchunks, num_warps = _plan(B, N, x.device)
    part = torch.empty((PARTS[mode], B, max(nchunks, 1)), dtype=accum_dtype(x.dtype), device=x.device)
    if nchunks > 0:
        _row_reduce_kernel[(B, nchunks)](
            x, y if y is not None else x, z if z is not None else x, alpha if alpha is not None else x,
            out_y if out_y is not None else x, out_z if out_z is not None else x,
            part, N, chunk, nchunks, B * nchunks,
            MODE=mode, ACC=tl_acc(x.dtype), BLOCK=block, EMULATE_BF16_RNE=INTERPRETED,
            num_warps=num_warps)
    return part, nchunks


def launch_finalize(mode, B, part, nchunks, params, one_sided, acc, norms=None, gout=None, out0=None, out1=None,
                    out2=None, out3=None, out4=None, out5=None):
    """Run _rows_finalize_kernel over B rows (params: (target, weight, inv_scale, exponent) or None; acc: tl
    dtype)."""
    block_r, grid = _fin_grid(B)
    dummy = part
    t, w, s, p = params if params is not None else (0.0, 0.0, 1.0, 2.0)
    _rows_finalize_kernel[grid](
        part, t, w, s, p, norms if norms is not None else dummy,
        gout if gout is not None else dummy, out0,
        *(o if o is not None else dummy for o in (out1, out2, out3, out4, out5)), B, nchunks, B * max(nchunks, 1),
        MODE=mode, ONE_SIDED=one_sided, IS_SQUARE=is_square(p, acc), ACC=acc, BLOCK_R=block_r,
        EMULATE_BF16_RNE=INTERPRETED, num_warps=4)


def is_square(exponent: float, acc) -> bool:
    """Whether the exponent, rounded to the accumulation dtype `acc` (a tl dtype) as the kernels see it, is 2:
    the C++ kernels take their square path on the same test (PenaltyParams holds the rounded exponent)."""
    if exponent == 2.0:
        return True
    if acc == tl.float32 and abs(exponent - 2.0) < 1e-6:  # (packing a huge double as "f" would raise)
        return struct.unpack("f", struct.pack("f", exponent))[0] == 2.0
    return False
