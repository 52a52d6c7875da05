// Interface between the op wrappers (csrc/ops.cpp: validation, layout, allocation, dispatcher
// registration) and the per-device kernels (csrc/cpu/kernels.cpp, csrc/cuda/kernels.cu).
//
// Layout contract for every "row" tensor handed to a kernel: B = size(0) samples, N = numel / B elements
// per sample, sample i occupying the contiguous block [data_ptr + i*N, data_ptr + (i+1)*N). All row
// tensors of one call share sizes and strides, so element j of one row tensor pairs with element j of
// another whatever the memory format (contiguous, channels_last, ...). The wrappers guarantee this.
// Per-sample tensors are 1-D, contiguous, of length B.
//
// dtypes: row tensors are float64, float32, float16 or bfloat16 (one dtype per call). Per-sample
// penalty tensors (values, norms, gout, d_gout) use the accumulation dtype: float32 for
// float32/float16/bfloat16 rows, float64 for float64 rows. alpha and g_alpha use the rows' dtype.
#pragma once

#include <ATen/core/TensorBase.h>

namespace gpkernels {

// The scalar arguments of the penalty ops, as the schema gives them. Only the penalty_forward op checks the
// ranges below (see csrc/ops.cpp); the kernels stay memory-safe whatever the values.
struct PenaltyScalars {
  double target;     // t >= 0
  double weight;     // w >= 0
  double inv_scale;  // s > 0, finite
  double exponent;   // p >= 1, finite
  bool one_sided;
};

#define GPK_DECLARE_KERNELS                                                                               \
  /* out = alpha_i * real + (1 - alpha_i) * fake */                                                     \
  void interp(const at::TensorBase& real, const at::TensorBase& fake, const at::TensorBase& alpha,      \
              const at::TensorBase& out);                                                               \
  /* g_real = alpha_i * grad, g_fake = (1 - alpha_i) * grad, g_alpha_i = <real_i - fake_i, grad_i> */   \
  void interp_backward(const at::TensorBase& grad, const at::TensorBase& real,                          \
                       const at::TensorBase& fake, const at::TensorBase& alpha,                         \
                       const at::TensorBase& g_real, const at::TensorBase& g_fake,                      \
                       const at::TensorBase& g_alpha);                                                  \
  /* norms_i = s ||g_i||, values_i = w |d_i|^p */                                                       \
  void penalty_forward(const at::TensorBase& grads, const PenaltyScalars& p,                            \
                       const at::TensorBase& values, const at::TensorBase& norms);                      \
  /* dgrads_i = gout_i c_i g_i, c_i from norms_i (the forward's output) */                              \
  void penalty_backward(const at::TensorBase& gout, const at::TensorBase& grads,                        \
                        const at::TensorBase& norms, const PenaltyScalars& p,                           \
                        const at::TensorBase& dgrads);                                                  \
  /* d_gout_i = c_i <g_i, v_i>, d_grads_i = gout_i (c_i v_i + k_i <g_i, v_i> g_i); norms recomputed */ \
  void penalty_double_backward(const at::TensorBase& v, const at::TensorBase& gout,                    \
                               const at::TensorBase& grads, const PenaltyScalars& p,                   \
                               const at::TensorBase& d_gout, const at::TensorBase& d_grads);

namespace cpu {
GPK_DECLARE_KERNELS
}  // namespace cpu

#ifdef GPKERNELS_WITH_CUDA
namespace cuda {
GPK_DECLARE_KERNELS
// Architectures this build carries device code for, as nvcc's __CUDA_ARCH_LIST__ gives them ("800,900").
const char* built_archs();
}  // namespace cuda
#endif

}  // namespace gpkernels
