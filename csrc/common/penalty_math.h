// Per-sample math shared by the CPU (C++) and CUDA kernels of gpkernels.
//
// Every function here is an inline host/device function with no memory access, so the CPU test suite
// exercises exactly the arithmetic the CUDA kernels run. The kernels only differ in how they walk memory.
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
// Interpolation x = a_i * real + (1 - a_i) * fake with one a_i per sample:
//   dx/dreal = a_i,  dx/dfake = 1 - a_i,  dL/da_i = <real_i - fake_i, gx_i>.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GPK_HD __host__ __device__ __forceinline__
#else
#define GPK_HD inline
#endif

#if defined(__CUDA_ARCH__)
#define GPK_SQRT sqrt
#define GPK_POW pow
#define GPK_FABS fabs
#else
#define GPK_SQRT std::sqrt
#define GPK_POW std::pow
#define GPK_FABS std::fabs
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

// n_i from the sum of squares of the raw (still scaled) gradient row.
template <typename acc_t>
GPK_HD acc_t row_norm(acc_t sumsq, const PenaltyParams<acc_t>& p) {
  return p.inv_scale * GPK_SQRT(sumsq);
}

// d_i: distance of the norm from the target (clamped at 0 in the one-sided form).
template <typename acc_t>
GPK_HD acc_t row_excess(acc_t norm, const PenaltyParams<acc_t>& p) {
  const acc_t d = norm - p.target;
  return (p.one_sided && d < acc_t(0)) ? acc_t(0) : d;
}

// value_i = w |d_i|^p.
template <typename acc_t>
GPK_HD acc_t row_value(acc_t norm, const PenaltyParams<acc_t>& p) {
  const acc_t d = row_excess(norm, p);
  if (p.exponent == acc_t(2)) return p.weight * d * d;
  return p.weight * GPK_POW(GPK_FABS(d), p.exponent);
}

// phi(d) = |d|^(p-1) sign(d); 0 at d = 0 (p = 1 included). NaN passes on.
template <typename acc_t>
GPK_HD acc_t odd_power(acc_t d, acc_t exponent) {
  if (d == acc_t(0)) return acc_t(0);
  const acc_t m = GPK_POW(GPK_FABS(d), exponent - acc_t(1));
  return d < acc_t(0) ? -m : m;
}

// phi'(d) = (p-1) |d|^(p-2); 0 at d = 0 (infinite there for p < 2, taken as 0). NaN passes on.
template <typename acc_t>
GPK_HD acc_t odd_power_slope(acc_t d, acc_t exponent) {
  if (d == acc_t(0)) return acc_t(0);
  return (exponent - acc_t(1)) * GPK_POW(GPK_FABS(d), exponent - acc_t(2));
}

// c_i: dvalue_i/dg_i = c_i g_i.
template <typename acc_t>
GPK_HD acc_t row_grad_coef(acc_t norm, const PenaltyParams<acc_t>& p) {
  const acc_t s = p.inv_scale;
  if (p.exponent == acc_t(2)) {
    if (p.target == acc_t(0)) return acc_t(2) * p.weight * s * s;
    if (norm == acc_t(0)) return acc_t(0);  // NaN passes on (see the header comment)
    const acc_t d = row_excess(norm, p);
    return acc_t(2) * p.weight * s * d * (s / norm);
  }
  if (norm == acc_t(0)) return acc_t(0);  // NaN passes on
  const acc_t wp = p.weight * p.exponent;
  if (p.target == acc_t(0)) return wp * s * s * GPK_POW(norm, p.exponent - acc_t(2));
  const acc_t d = row_excess(norm, p);
  return wp * s * odd_power(d, p.exponent) * (s / norm);
}

// k_i: the part of the double backward that comes from c_i depending on g_i.
template <typename acc_t>
GPK_HD acc_t row_second_coef(acc_t norm, const PenaltyParams<acc_t>& p) {
  if (p.exponent == acc_t(2)) {
    if (p.target == acc_t(0) || norm == acc_t(0)) return acc_t(0);
    if (p.one_sided && norm <= p.target) return acc_t(0);  // NaN passes on
    const acc_t s = p.inv_scale;
    const acc_t r = s / norm;  // 1 / ||g_i||
    return acc_t(2) * p.weight * p.target * s * r * r * r;
  }
  if (norm == acc_t(0)) return acc_t(0);
  if (p.one_sided && norm <= p.target) return acc_t(0);  // NaN passes on
  const acc_t s = p.inv_scale;
  const acc_t wp = p.weight * p.exponent;
  if (p.target == acc_t(0)) {
    return wp * (p.exponent - acc_t(2)) * (s * s) * (s * s) * GPK_POW(norm, p.exponent - acc_t(4));
  }
  const acc_t d = row_excess(norm, p);
  const acc_t r = s / norm;
  return wp * s * r * r * (s * odd_power_slope(d, p.exponent) - r * odd_power(d, p.exponent));
}

// x = a * real + (1 - a) * fake, written as the paper writes it.
template <typename acc_t>
GPK_HD acc_t lerp(acc_t a, acc_t real, acc_t fake) {
  return a * real + (acc_t(1) - a) * fake;
}

}  // namespace math
}  // namespace gpkernels
