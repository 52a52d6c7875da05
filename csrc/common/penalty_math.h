// Per-sample math shared by the CPU (C++) and CUDA kernels of gpkernels.
//
// Every function here is a host/device function with no memory access, so the CPU test suite exercises
// exactly the arithmetic the CUDA kernels run. The kernels only differ in how they walk memory.
//
// Notation (one sample i, its gradient g_i flattened over all non-batch dims):
//   s   = inv_scale (AMP unscale factor, 1 without AMP),  t = target >= 0,  w = weight >= 0,
//   p   = exponent >= 1 (2: WGAN-GP's square)
//   n_i = s * ||g_i||                                         (the reported per-sample norm)
//   d_i = n_i - t          (one-sided: max(0, n_i - t))
//   value_i = w * |d_i|^p  (the reduction over samples happens outside the kernels)
//   phi(d) = |d|^(p-1) sign(d),  phi'(d) = (p-1) |d|^(p-2)   (d/dd of |d|^p is p phi(d))
//
// Backward, for an upstream gradient gout_i of value_i (dn_i/dg_i = s g_i / ||g_i|| = (s^2 / n_i) g_i):
//   dvalue_i/dg_i = c_i * g_i,   c_i = w p phi(d_i) s (s / n_i)
//
// Double backward: the backward B(gout, g) = gout * c(g) * g, differentiated against an incoming V:
//   dB/dgout_i = c_i <g_i, V_i>
//   dB/dg_i    = gout_i * (c_i V_i + k_i <g_i, V_i> g_i)
//   where k_i g_i is the gradient of c_i:  dc_i/dg_i = (dc_i/dn_i) (s^2 / n_i) g_i, so
//   k_i = (dc_i/dn_i) s^2 / n_i,  dc_i/dn_i = w p s^2 (phi'(d_i) / n_i - phi(d_i) / n_i^2)   (dd/dn = 1)
//       = w p s^4 (phi'(d_i) - phi(d_i) / n_i) / n_i^2 = w p s r^2 (s phi'(d_i) - r phi(d_i)),  r = s / n_i.
//
// p == 2 (phi(d) = d, phi' = 1) takes its own code path, the one the kernels ran before the exponent
// existed, so its numbers are bitwise those of that version:
//   c_i = 2 w s d_i (s / n_i),  k_i = 2 w s^4 (n_i - d_i) / n_i^3 = 2 w t s (s / n_i)^3.
// With t = 0 (R1 / W-div: value = w s^p ||g_i||^p, d = n) the coefficients are computed in closed form:
//   c_i = w p s^2 n_i^(p-2),  k_i = w p (p-2) s^4 n_i^(p-4)     (p = 2: c_i = 2 w s^2, k_i = 0).
//
// Special cases (the derivative is taken as 0 wherever the formula has no finite value):
//   - n_i = 0 (a zero gradient): c_i = 0 and k_i = 0, except p = 2 with t = 0, where the value
//     w s^2 ||g_i||^2 is smooth and c_i = 2 w s^2 exactly (as everywhere with p = 2, t = 0).
//     (With t > 0 the formulas divide by n_i = 0; with t = 0 and p < 2, n^(p-2) is infinite.)
//   - d_i = 0 (n_i = t, or one-sided n_i <= t) with p != 2: phi(0) = 0, so c_i = 0 (also for p = 1, where
//     sign(0) = 0 picks the zero subgradient); phi'(0) = 0 for p > 2 and is infinite for 1 <= p < 2, taken
//     as 0, so k_i = 0. For p = 1 phi' = 0 wherever d != 0.
//   - one-sided with n_i <= t: value_i, c_i and k_i are 0 (for p = 2 too).
//   - a non-finite inner gradient (fp16 overflow under AMP) must reach the parameter gradients so that
//     GradScaler sees it and skips the step, so a NaN or infinite norm is never caught by the special cases:
//     every test above is written so that a NaN fails it, and the formulas carry it on. A NaN norm gives a
//     NaN c_i; an infinite one a c_i of inf, NaN or 0 depending on p and t. Either way c_i g_i is not finite
//     in that row (0 * inf = NaN). (With t = 0 and p = 2, c_i = 2 w s^2 regardless: the non-finite g_i
//     itself carries it.)
//
// Range (extreme gradient norms). Each result is as accurate as at moderate norms wherever the exact one is a
// finite normal number of the output type, for every finite norm (float32: ||g_i|| from 2^-126 to 3e38,
// float64: 2^-1022 to 1.7e308); inf where it is too large (NaN where overflowing terms of opposite signs meet):
//   - Sum of squares. Summed plainly as before; a row whose sum is not a normal number (0 or subnormal: its
//     squares underflowed; inf: they overflowed) takes the sum of (2^R g)^2 or (2^-R g)^2 instead (R = 90 in
//     float32, 600 in float64: rescue_kind, rescue_factor), in which every square of a finite row is normal,
//     and ||g_i|| = 2^-+R sqrt(that). The CPU kernels sum it in a second pass over such rows only; the CUDA
//     and Triton kernels beside the plain sums in the same pass.
//   - Per-row scalars. The formulas below run in the order of operations written, first in Checked
//     arithmetic (plain, noting whether every result was a normal number or an exact 0); where one was not,
//     again in Wide arithmetic (a mantissa and an int exponent: nothing over- or underflows in between,
//     e.g. 1 / n_i^3 of a norm of 1e-14, 1e41 in float32). Wide products and quotients of normal numbers round
//     exactly as plain ones, so wherever the plain formulas stay normal, the results are theirs bit for bit
//     (for p = 2 the kernels' numbers from before this scheme; the Triton kernels run Wide on every row).
//   - Multipliers of a row: gout_i c_i on g_i is handed to the kernels as coef * (g * scale), scale = 2^q
//     (1 wherever the product is a normal number), so that neither over- nor underflows alone. In the double
//     backward, d_grads_i = a_i v_i + b_i g_i as before where a_i and b_i are normal numbers; where they are
//     not (the smallest norms: c_i ~ 1 / ||g_i||), both terms overflow along u_i = g_i / ||g_i|| and cancel,
//     so d_grads_i is formed across and along u_i instead, from kappa_i = c_i + k_i ||g_i||^2 = w p s^2 phi'(d_i)
//     in closed form (DoubleBackwardTerms, double_backward_element).
//   - The backward starts from the forward's norms n_i: where n_i is subnormal it has fewer significant bits,
//     and so has c_i (the double backward recomputes ||g_i||).
//   - Limits: n_i itself must be finite (beyond the largest finite number the coefficients are inf or NaN: an
//     overflow that GradScaler sees); the incoming v and the upstream gradients are taken as they are (a dot
//     product <g_i, v_i> that underflows is not rescued unless ||g_i|| was); a term a_i v_i that overflows
//     while the sum across u_i would not (v_i huge) is not recovered.
//
// Interpolation x = a_i * real + (1 - a_i) * fake with one a_i per sample:
//   dx/dreal = a_i,  dx/dfake = 1 - a_i,  dL/da_i = <real_i - fake_i, gx_i>.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GPK_HD __host__ __device__ __forceinline__
// The rare paths (Wide arithmetic): a function of its own, so that the kernels' common path stays small.
#define GPK_HD_RARE __host__ __device__ __noinline__
#else
#define GPK_HD inline
#define GPK_HD_RARE inline
#endif

#if defined(__CUDA_ARCH__)
#define GPK_SQRT sqrt
#define GPK_POW pow
#define GPK_FABS fabs
#define GPK_ILOGB ilogb
#define GPK_SCALBN scalbn
#define GPK_LOG2 log2
#define GPK_EXP2 exp2
#define GPK_FLOOR floor
#else
#define GPK_SQRT std::sqrt
#define GPK_POW std::pow
#define GPK_FABS std::fabs
#define GPK_ILOGB std::ilogb
#define GPK_SCALBN std::scalbn
#define GPK_LOG2 std::log2
#define GPK_EXP2 std::exp2
#define GPK_FLOOR std::floor
#endif

namespace gpkernels {
namespace math {

// Accumulation type of a stored type: float for float/half/bfloat16, double for double.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using accum_t = typename AccType<scalar_t>::type;

// Scalars of one penalty call, converted to the accumulation type (float, or double for fp64 input).
template <typename acc_t>
struct PenaltyParams {
  acc_t target;     // t >= 0
  acc_t weight;     // w >= 0
  acc_t inv_scale;  // s > 0
  acc_t exponent;   // p >= 1
  bool one_sided;
};

// ---------------------------------------------------------------------------------------------------------
// Range of the accumulation types and the rescue of a row's sum of squares (see "Range" above).

template <typename T>
struct Range;
template <>
struct Range<float> {
  static constexpr int kRescue = 90;  // |g| < 2^-63 (sum < 2^-126): 2^90 g in [2^-59, 2^27]; 2^-90 g <= 2^38
  GPK_HD static float min_normal() { return 1.17549435082228750797e-38f; }  // 2^-126
  GPK_HD static float max_finite() { return 3.40282346638528859812e+38f; }
  GPK_HD static float rescue_up() { return 1.237940039285380274899e+27f; }    // 2^90
  GPK_HD static float rescue_down() { return 8.077935669463160887416e-28f; }  // 2^-90
  GPK_HD static float rescue_up_below() { return 1.084202172485504434007e-19f; }  // 2^-63: |g| in rows rescued up
};
template <>
struct Range<double> {
  static constexpr int kRescue = 600;  // |g| < 2^-511: 2^600 g in [2^-474, 2^89]; 2^-600 g <= 2^424
  GPK_HD static double min_normal() { return 2.2250738585072013831e-308; }  // 2^-1022
  GPK_HD static double max_finite() { return 1.7976931348623157081e+308; }
  GPK_HD static double rescue_up() { return 4.1495155688809929586e+180; }     // 2^600
  GPK_HD static double rescue_down() { return 2.4099198651028841177e-181; }   // 2^-600
  GPK_HD static double rescue_up_below() { return 1.4916681462400413487e-154; }  // 2^-511
};

template <typename T>
GPK_HD bool is_finite(T x) {
  return GPK_FABS(x) <= Range<T>::max_finite();  // false for inf and NaN
}
template <typename T>
GPK_HD bool is_normal(T x) {
  const T a = GPK_FABS(x);
  return a >= Range<T>::min_normal() && a <= Range<T>::max_finite();
}

// Whether a row's plain sum of squares needs the rescue pass: +1 (0 or subnormal: sum again scaled up),
// -1 (inf: scaled down), 0 (a normal number, or NaN, which passes on).
template <typename T>
GPK_HD int rescue_kind(T sumsq) {
  if (sumsq < Range<T>::min_normal()) return 1;
  if (sumsq > Range<T>::max_finite()) return -1;
  return 0;
}

// The factor every element is multiplied by before squaring in the rescue pass of `kind`.
template <typename T>
GPK_HD T rescue_factor(int kind) {
  return kind > 0 ? Range<T>::rescue_up() : (kind < 0 ? Range<T>::rescue_down() : T(1));
}

// ---------------------------------------------------------------------------------------------------------
// Wide: m * 2^e with m in [1, 2) (signed), or m = 0, inf or NaN. No over- or underflow in * and /.
// Products and quotients round m exactly as plain arithmetic rounds a normal result.

template <typename T>
struct Wide {
  T m;
  int e;
  GPK_HD Wide(T m_, int e_) : m(m_), e(e_) {}
  GPK_HD explicit Wide(T x) : m(x), e(0) {  // exact
    if (x != T(0) && is_finite(x)) {
      e = GPK_ILOGB(x);
      m = GPK_SCALBN(x, -e);
    }
  }
  // Rounded to T (0 or inf where out of range).
  GPK_HD T narrow() const { return GPK_SCALBN(m, e); }
};

template <typename T>
GPK_HD Wide<T> operator-(Wide<T> a) {
  return Wide<T>(-a.m, a.e);
}
template <typename T>
GPK_HD Wide<T> operator*(Wide<T> a, Wide<T> b) {
  Wide<T> r(a.m * b.m, a.e + b.e);
  if (GPK_FABS(r.m) >= T(2)) {  // exact
    r.m *= T(0.5);
    r.e += 1;
  }
  return r;
}
template <typename T>
GPK_HD Wide<T> operator/(Wide<T> a, Wide<T> b) {
  Wide<T> r(a.m / b.m, a.e - b.e);
  if (GPK_FABS(r.m) < T(1) && r.m != T(0)) {
    r.m *= T(2);
    r.e -= 1;
  }
  return r;
}
template <typename T>
GPK_HD Wide<T> operator-(Wide<T> a, Wide<T> b) {
  if (b.m == T(0)) return a;
  if (a.m == T(0)) return -b;
  if (!is_finite(a.m) || !is_finite(b.m)) return Wide<T>(a.m - b.m);
  const int e = a.e > b.e ? a.e : b.e;
  Wide<T> r(GPK_SCALBN(a.m, a.e - e) - GPK_SCALBN(b.m, b.e - e));
  r.e += e;
  return r;
}

// x^y for x >= 0 (or NaN) through the logarithm, 2^(y log2 x), the integer part of y log2 x in double so that
// only its fraction is rounded in T (a few ulp; only rows the plain formulas could not take get here).
template <typename T>
GPK_HD Wide<T> power(Wide<T> x, T y) {
  if (y == T(0)) return Wide<T>(T(1));
  if (y == T(1)) return x;
  if (x.m == T(0) || !is_finite(x.m)) return Wide<T>(GPK_POW(x.m, y));
  double L = double(y) * double(x.e) + double(y * GPK_LOG2(x.m));
  L = L < -1e6 ? -1e6 : (L > 1e6 ? 1e6 : L);  // beyond any exponent of T: 0 or inf either way
  const double k = GPK_FLOOR(L);
  Wide<T> r(GPK_EXP2(T(L - k)), int(k));
  if (r.m >= T(2)) {
    r.m *= T(0.5);
    r.e += 1;
  }
  return r;
}

// Checked: plain arithmetic that notes whether every result was a normal number or an exact 0 (a zero
// operand, or exact cancellation). Where it was, Wide arithmetic would have rounded identically.
template <typename T>
struct Checked {
  T v;
  bool ok;
  GPK_HD Checked(T v_, bool ok_) : v(v_), ok(ok_) {}
  GPK_HD explicit Checked(T x) : v(x), ok(is_finite(x)) {}
};

template <typename T>
GPK_HD Checked<T> operator-(Checked<T> a) {
  return Checked<T>(-a.v, a.ok);
}
template <typename T>
GPK_HD Checked<T> operator*(Checked<T> a, Checked<T> b) {
  const T r = a.v * b.v;
  return Checked<T>(r, a.ok && b.ok && (is_normal(r) || a.v == T(0) || b.v == T(0)));
}
template <typename T>
GPK_HD Checked<T> operator/(Checked<T> a, Checked<T> b) {
  const T r = a.v / b.v;
  return Checked<T>(r, a.ok && b.ok && (is_normal(r) || (a.v == T(0) && b.v != T(0))));
}
template <typename T>
GPK_HD Checked<T> operator-(Checked<T> a, Checked<T> b) {
  const T r = a.v - b.v;  // exact where subnormal
  return Checked<T>(r, a.ok && b.ok && is_finite(r));
}
template <typename T>
GPK_HD Checked<T> power(Checked<T> x, T y) {
  const T r = GPK_POW(x.v, y);
  return Checked<T>(r, x.ok && (is_normal(r) || (x.v == T(0) && y > T(0))));
}

// A per-row multiplier of a row tensor x, applied as coef * (x * scale). scale = 1 where the multiplier is a
// normal number (or 0, inf, NaN); otherwise a power of two chosen so that neither factor nor x * scale
// over- or underflows where the product does not.
template <typename T>
struct Multiplier {
  T coef;
  T scale;
};

template <typename T>
GPK_HD Multiplier<T> split(Wide<T> a) {
  const T plain = a.narrow();
  if (a.m == T(0) || !is_finite(a.m) || is_normal(plain)) return {plain, T(1)};
  const int lo = GPK_ILOGB(Range<T>::min_normal()), hi = GPK_ILOGB(Range<T>::max_finite());
  // Too large: coef in [1, 2), so |x * scale| <= |product|. Too small: coef in [1/2, 1), |x * scale| >=.
  int q = a.e > 0 ? a.e : a.e + 1;
  q = q < lo ? lo : (q > hi ? hi : q);
  return {GPK_SCALBN(a.m, a.e - q), GPK_SCALBN(T(1), q)};
}

// ---------------------------------------------------------------------------------------------------------
// One row's norm, as the per-row math needs it.

template <typename T>
struct RowNorm {
  T n;         // n_i = s ||g_i||, rounded to T: the reported norm
  T factor;    // n_i = factor * root * 2^shift (s and the square root of the (rescued) sum of squares;
  T root;      // or 1 and the reported norm): kept apart, so that the Wide n_i is formed only where needed
  int shift;
  bool plain;  // n is a normal number from a plain sum: the formulas are tried in Checked arithmetic first
  GPK_HD Wide<T> wide() const {
    Wide<T> w = Wide<T>(factor) * Wide<T>(root);
    w.e += shift;
    return w;
  }
};

// From the sum of squares of the raw row (kind = rescue_kind(sumsq); scaled_sumsq = the sum of
// (rescue_factor(kind) g)^2 where kind != 0, unused otherwise).
template <typename T>
GPK_HD RowNorm<T> row_norm(T sumsq, int kind, T scaled_sumsq, const PenaltyParams<T>& p) {
  if (kind == 0) {
    const T root = GPK_SQRT(sumsq);
    const T n = p.inv_scale * root;
    return {n, p.inv_scale, root, 0, is_normal(n)};
  }
  RowNorm<T> rn{T(0), p.inv_scale, GPK_SQRT(scaled_sumsq), -kind * Range<T>::kRescue, false};
  rn.n = rn.wide().narrow();
  return rn;
}

// From a reported norm (the backward's input).
template <typename T>
GPK_HD RowNorm<T> row_norm_of(T n) {
  return {n, T(1), n, 0, is_normal(n)};
}

// <g_i, v_i>: the plain sum, and where the row was rescued (kind != 0) the rescue pass's sum of
// (rescue_factor g) v, which wide() takes unless it overflowed (v huge).
template <typename T>
struct RowDot {
  T dot;
  int kind;
  T scaled;
  GPK_HD Wide<T> wide() const {
    if (kind == 0 || !is_finite(scaled)) return Wide<T>(dot);
    Wide<T> w(scaled);
    w.e -= kind * Range<T>::kRescue;
    return w;
  }
};

// ---------------------------------------------------------------------------------------------------------
// The formulas, written once for both arithmetics (Num = Checked<T> or Wide<T>); `norm` is n_i rounded (for
// d_i and the special cases), `n` the same norm in Num.

// d_i: distance of the norm from the target (clamped at 0 in the one-sided form).
template <typename T>
GPK_HD T row_excess(T norm, const PenaltyParams<T>& p) {
  const T d = norm - p.target;
  return (p.one_sided && d < T(0)) ? T(0) : d;
}

// phi(d) = |d|^(p-1) sign(d); 0 at d = 0 (p = 1 included). NaN passes on.
template <typename Num, typename T>
GPK_HD Num odd_power(T d, T exponent) {
  if (d == T(0)) return Num(T(0));
  const Num m = power(Num(GPK_FABS(d)), exponent - T(1));
  return d < T(0) ? -m : m;
}

// phi'(d) = (p-1) |d|^(p-2); 0 at d = 0 (infinite there for p < 2, taken as 0). NaN passes on.
template <typename Num, typename T>
GPK_HD Num odd_power_slope(T d, T exponent) {
  if (d == T(0)) return Num(T(0));
  return Num(exponent - T(1)) * power(Num(GPK_FABS(d)), exponent - T(2));
}

// value_i = w |d_i|^p.
template <typename Num, typename T>
GPK_HD Num value_formula(T norm, Num n, const PenaltyParams<T>& p) {
  const T d = row_excess(norm, p);
  if (p.target == T(0) && d != T(0)) return Num(p.weight) * power(n, p.exponent);  // d = n
  return Num(p.weight) * power(Num(GPK_FABS(d)), p.exponent);
}

// c_i: dvalue_i/dg_i = c_i g_i.
template <typename Num, typename T>
GPK_HD Num grad_coef_formula(T norm, Num n, const PenaltyParams<T>& p) {
  const Num s(p.inv_scale), w(p.weight);
  if (p.exponent == T(2)) {
    if (p.target == T(0)) return Num(T(2)) * w * s * s;
    if (norm == T(0)) return Num(T(0));  // NaN passes on (see the header comment)
    return Num(T(2)) * w * s * Num(row_excess(norm, p)) * (s / n);
  }
  if (norm == T(0)) return Num(T(0));  // NaN passes on
  const Num wp = w * Num(p.exponent);
  if (p.target == T(0)) return wp * s * s * power(n, p.exponent - T(2));
  return wp * s * odd_power<Num>(row_excess(norm, p), p.exponent) * (s / n);
}

// k_i: the part of the double backward that comes from c_i depending on g_i.
template <typename Num, typename T>
GPK_HD Num second_coef_formula(T norm, Num n, const PenaltyParams<T>& p) {
  if (p.exponent == T(2)) {
    if (p.target == T(0) || norm == T(0)) return Num(T(0));
    if (p.one_sided && norm <= p.target) return Num(T(0));  // NaN passes on
    const Num s(p.inv_scale);
    const Num r = s / n;  // 1 / ||g_i||
    return Num(T(2)) * Num(p.weight) * Num(p.target) * s * r * r * r;
  }
  if (norm == T(0)) return Num(T(0));
  if (p.one_sided && norm <= p.target) return Num(T(0));  // NaN passes on
  const Num s(p.inv_scale);
  const Num wp = Num(p.weight) * Num(p.exponent);
  if (p.target == T(0)) {
    return wp * Num(p.exponent - T(2)) * (s * s) * (s * s) * power(n, p.exponent - T(4));
  }
  const T d = row_excess(norm, p);
  const Num r = s / n;
  return wp * s * r * r * (s * odd_power_slope<Num>(d, p.exponent) - r * odd_power<Num>(d, p.exponent));
}

// kappa_i = c_i + k_i ||g_i||^2, the double backward's coefficient along g_i (below), from its closed form
// w p s^2 phi'(d_i) (p = 2: 2 w s^2), so that the parts of c_i and k_i ||g_i||^2 in 1 / ||g_i|| never meet:
// c_i where k_i is 0 by a special case.
template <typename Num, typename T>
GPK_HD Num along_coef_formula(T norm, Num n, const PenaltyParams<T>& p) {
  const bool k_zero = norm == T(0) || (p.one_sided && norm <= p.target);  // NaN passes on
  if (p.exponent == T(2)) {
    if (p.target == T(0) || k_zero) return grad_coef_formula(norm, n, p);
    const Num s(p.inv_scale);
    return Num(T(2)) * Num(p.weight) * s * s;
  }
  if (k_zero) return grad_coef_formula(norm, n, p);
  const Num s(p.inv_scale);
  const Num wp = Num(p.weight) * Num(p.exponent);
  if (p.target == T(0)) return wp * Num(p.exponent - T(1)) * s * s * power(n, p.exponent - T(2));
  return wp * s * s * odd_power_slope<Num>(row_excess(norm, p), p.exponent);
}

// ---------------------------------------------------------------------------------------------------------
// What the kernels call, per row.

// The rare paths of the functions below.
// (Arguments by value: a reference would keep the caller's objects in local memory on the common path too.)
template <typename T>
GPK_HD_RARE T row_value_wide(const RowNorm<T> rn, const PenaltyParams<T> p) {
  return value_formula(rn.n, rn.wide(), p).narrow();
}
template <typename T>
GPK_HD_RARE Multiplier<T> grad_multiplier_wide(const RowNorm<T> rn, T gout, const PenaltyParams<T> p) {
  return split(Wide<T>(gout) * grad_coef_formula(rn.n, rn.wide(), p));
}

// value_i (p = 2: w d_i^2 in plain arithmetic, which over- or underflows only where the value does).
template <typename T>
GPK_HD T row_value(const RowNorm<T>& rn, const PenaltyParams<T>& p) {
  if (p.exponent == T(2)) {
    const T d = row_excess(rn.n, p);
    return p.weight * d * d;
  }
  if (rn.plain) {
    const Checked<T> v = value_formula(rn.n, Checked<T>(rn.n, true), p);
    if (v.ok) return v.v;
  }
  return row_value_wide(rn, p);
}

// The backward's multiplier of g_i: gout_i c_i.
template <typename T>
GPK_HD Multiplier<T> grad_multiplier(const RowNorm<T>& rn, T gout, const PenaltyParams<T>& p) {
  if (rn.plain) {
    const Checked<T> x = Checked<T>(gout) * grad_coef_formula(rn.n, Checked<T>(rn.n, true), p);
    if (x.ok) return {x.v, T(1)};
  }
  return grad_multiplier_wide(rn, gout, p);
}

// The double backward's per-row terms: d_gout_i = c_i <g_i, v_i>, and d_grads_i = a_i v_i + b_i g_i with
// a_i = gout_i c_i, b_i = gout_i k_i <g_i, v_i> where both are finite normal numbers (or 0, or not finite: NaN
// passes on). Where one is not (||g_i|| so small that c_i ~ 1 / ||g_i|| overflows), a_i v_i and b_i g_i both
// overflow along u_i = g_i / ||g_i|| and cancel there, so d_grads_i is formed from its parts across and along u_i:
//   gout_i c_i (v_i - <u_i, v_i> u_i) + gout_i kappa_i <u_i, v_i> u_i,   kappa_i = c_i + k_i ||g_i||^2,
// "projected": with sigma = 2^q ~ 1 / ||g_i|| (so g sigma ~ u_i; mu = ||g_i|| sigma),
//   d_grads_i = a.coef ((v_i - gamma (g_i sigma)) a.scale) + b (g_i sigma),
//   a = gout_i c_i, gamma = <u_i, v_i> / mu, b = gout_i kappa_i <u_i, v_i> / mu.
template <typename T>
struct DoubleBackwardTerms {
  T d_gout;
  Multiplier<T> a;  // on v_i (scale 1 unless projected)
  T b;              // on g_i, or on g_i sigma where projected
  T gamma;          // projected only
  T sigma;          // 0: not projected (d_grads_i = a.coef v_i + b g_i)
};

// One element of d_grads_i from the row's terms (v: of v_i, g: of g_i, in the accumulation type).
template <typename T>
GPK_HD T double_backward_element(T a, T a_scale, T b, T gamma, T sigma, T v, T g) {
  if (sigma == T(0)) return a * v + b * g;
  const T gs = g * sigma;
  return a * ((v - gamma * gs) * a_scale) + b * gs;
}

template <typename T>
GPK_HD bool plain_multiplier(Wide<T> x) {  // x needs no scale: a normal number, 0, inf or NaN
  return x.m == T(0) || !is_finite(x.m) || is_normal(x.narrow());
}

template <typename T>
GPK_HD DoubleBackwardTerms<T> double_backward_terms_wide(const RowNorm<T>& rn, T gout, Wide<T> dot,
                                                         const PenaltyParams<T>& p) {
  const Wide<T> go(gout), n = rn.wide();
  const Wide<T> c = grad_coef_formula(rn.n, n, p);
  const Wide<T> a = go * c;
  const Wide<T> b = go * second_coef_formula(rn.n, n, p) * dot;
  const T d_gout = (c * dot).narrow();
  if ((plain_multiplier(a) && plain_multiplier(b)) || n.m == T(0) || !is_finite(n.m)) {
    return {d_gout, {a.narrow(), T(1)}, b.narrow(), T(0), T(0)};
  }
  const Wide<T> m = n / Wide<T>(p.inv_scale);  // ||g_i||
  const int lo = GPK_ILOGB(Range<T>::min_normal()), hi = GPK_ILOGB(Range<T>::max_finite());
  const int q = -m.e < lo ? lo : (-m.e > hi ? hi : -m.e);
  const Wide<T> mu(m.m, m.e + q);
  const Wide<T> along = dot / m / mu;  // <u_i, v_i> / mu
  return {d_gout, split(a), (go * along_coef_formula(rn.n, n, p) * along).narrow(), along.narrow(),
          GPK_SCALBN(T(1), q)};
}

// The call of the rare path takes two pointers (scalars beyond the registers of the calling convention would
// travel through the stack, which ptxas counts as spills).
template <typename T>
struct DoubleBackwardInputs {
  RowNorm<T> rn;
  T gout;
  RowDot<T> dot;
  PenaltyParams<T> p;
};

template <typename T>
GPK_HD_RARE void double_backward_terms_rare(const DoubleBackwardInputs<T>* in, DoubleBackwardTerms<T>* out) {
  *out = double_backward_terms_wide(in->rn, in->gout, in->dot.wide(), in->p);
}

template <typename T>
GPK_HD DoubleBackwardTerms<T> double_backward_terms(const RowNorm<T>& rn, T gout, const RowDot<T>& dot,
                                                     const PenaltyParams<T>& p) {
  if (rn.plain) {
    const Checked<T> n(rn.n, true), go(gout), dt(dot.dot);
    const Checked<T> c = grad_coef_formula(rn.n, n, p);
    const Checked<T> k = second_coef_formula(rn.n, n, p);
    const Checked<T> d_gout = c * dt, a = go * c, b = go * k * dt;
    if (d_gout.ok && a.ok && b.ok) return {d_gout.v, {a.v, T(1)}, b.v, T(0), T(0)};
  }
  const DoubleBackwardInputs<T> in{rn, gout, dot, p};
  DoubleBackwardTerms<T> r;
  double_backward_terms_rare(&in, &r);
  return r;
}

// x = a * real + (1 - a) * fake, written as the paper writes it.
template <typename acc_t>
GPK_HD acc_t lerp(acc_t a, acc_t real, acc_t fake) {
  return a * real + (acc_t(1) - a) * fake;
}

}  // namespace math
}  // namespace gpkernels
