// Per-sample math shared by the CPU (C++) and CUDA kernels of gpkernels.
//
// Every function here is an inline host/device function with no memory access, so the CPU test suite
// exercises exactly the arithmetic the CUDA kernels run. The kernels only differ in how they walk memory.
//
// Notation (one sample i, its gradient g_i flattened over all non-batch dims):
//   s   = inv_scale (AMP unscale factor, 1 without AMP),  t = target >= 0,  w = weight >= 0
//   n_i = s * ||g_i||                                         (the reported per-sample norm)
//   d_i = n_i - t          (one-sided: max(0, n_i - t))
//   value_i = w * d_i^2    (the reduction over samples happens outside the kernels)
//
// Backward, for an upstream gradient gout_i of value_i:
//   dvalue_i/dg_i = c_i * g_i,   c_i = 2 w s d_i / ||g_i|| = 2 w s d_i (s / n_i)
//   c_i = 0 where ||g_i|| = 0 (the gradient there is taken as 0, never NaN), or where d_i = 0;
//   a NaN or infinite norm gives a NaN c_i on purpose: a non-finite inner gradient (fp16 overflow under
//   AMP) must reach the parameter gradients so that GradScaler sees it and skips the step;
//   with t = 0 the value is w s^2 ||g_i||^2, smooth everywhere, and c_i = 2 w s^2 exactly.
//
// Double backward: the backward B(gout, g) = gout * c(g) * g, differentiated against an incoming V:
//   dB/dgout_i = c_i <g_i, V_i>
//   dB/dg_i    = gout_i * (c_i V_i + k_i <g_i, V_i> g_i),   k_i = 2 w s t / ||g_i||^3 = 2 w t s (s / n_i)^3
//   k_i = 0 where t = 0, where ||g_i|| = 0, and one-sided where n_i <= t.
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
#else
#define GPK_SQRT std::sqrt
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

// value_i = w d_i^2.
template <typename acc_t>
GPK_HD acc_t row_value(acc_t norm, const PenaltyParams<acc_t>& p) {
  const acc_t d = row_excess(norm, p);
  return p.weight * d * d;
}

// c_i: dvalue_i/dg_i = c_i g_i.
template <typename acc_t>
GPK_HD acc_t row_grad_coef(acc_t norm, const PenaltyParams<acc_t>& p) {
  const acc_t s = p.inv_scale;
  if (p.target == acc_t(0)) return acc_t(2) * p.weight * s * s;
  if (norm == acc_t(0)) return acc_t(0);  // NaN passes on (see the header comment)
  const acc_t d = row_excess(norm, p);
  return acc_t(2) * p.weight * s * d * (s / norm);
}

// k_i: the part of the double backward that comes from c_i depending on g_i.
template <typename acc_t>
GPK_HD acc_t row_second_coef(acc_t norm, const PenaltyParams<acc_t>& p) {
  if (p.target == acc_t(0) || norm == acc_t(0)) return acc_t(0);
  if (p.one_sided && norm <= p.target) return acc_t(0);  // NaN passes on
  const acc_t s = p.inv_scale;
  const acc_t r = s / norm;  // 1 / ||g_i||
  return acc_t(2) * p.weight * p.target * s * r * r * r;
}

// x = a * real + (1 - a) * fake, written as the paper writes it.
template <typename acc_t>
GPK_HD acc_t lerp(acc_t a, acc_t real, acc_t fake) {
  return a * real + (acc_t(1) - a) * fake;
}

}  // namespace math
}  // namespace gpkernels
