// Op schemas of gpkernels, their device-independent wrappers (validation, memory layout, allocation) and
// their registration for the CPU and CUDA dispatch keys. The kernels themselves live in cpu/ and cuda/.
// Their autograd is in csrc/autograd.cpp; fake-tensor registrations are made from Python (gpkernels/ops/),
// which also defines the same schemas for the Triton backend.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "gpkernels.h"

namespace gpkernels {
namespace {

// True when every sample of t occupies one contiguous block of numel/B elements (contiguous,
// channels_last and any other dense layout whose batch dimension is outermost). Such a tensor can be
// handed to a kernel as is; the kernels see rows of N elements in a fixed, shared order.
bool batch_outer_dense(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  // The dims of size > 1, from the smallest stride up, must form a contiguous layout, the batch dim last.
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, dim)
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) != 1) dims.emplace_back(t.stride(d), d);
  }
  std::stable_sort(dims.begin(), dims.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  int64_t expected = 1;
  for (const auto& [stride, d] : dims) {
    if (stride != expected) return false;
    expected *= t.size(d);
  }
  return t.size(0) == 1 || dims.back().second == 0;
}

at::Tensor as_rows(const at::Tensor& t) { return batch_outer_dense(t) ? t : t.contiguous(); }

// t with exactly the sizes and strides of ref (a tensor that as_rows returned).
at::Tensor rows_like(const at::Tensor& t, const at::Tensor& ref) {
  if (t.strides() == ref.strides()) return t;
  at::Tensor out = at::empty_like(ref);
  out.copy_(t);
  return out;
}

at::ScalarType accum_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Input checks. They raise the Python exception types of the front end (gpkernels/_checks.py): TypeError
// (TORCH_CHECK_TYPE) for a wrong dtype, ValueError (TORCH_CHECK_VALUE) for a wrong shape, batch, device or
// scalar value, each message naming the op and the argument: "gpkernels::interp: fake must ...".
void check_rows(const char* op, const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op, ": ",
                   name, " must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(t.dim() >= 1, op, ": ", name, " must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK_VALUE(t.size(0) >= 1, op, ": ", name, " has an empty batch (shape ", t.sizes(), ")");
}

void check_same(const char* op, const at::Tensor& t, const at::Tensor& ref, const char* name,
                const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ",
                    ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name, " (",
                   ref.scalar_type(), "), got ", t.scalar_type());
}

// A per-sample vector: shape (B,), on ref's device, of the given dtype.
void check_per_sample(const char* op, const at::Tensor& t, const at::Tensor& ref, at::ScalarType dtype,
                      const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == ref.size(0), op, ": ", name, " must have shape (", ref.size(0),
                    ",) (one value per sample), got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the samples are on ",
                    ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
}

// The penalty scalars are checked only by penalty_forward, the entry of the derivative chain:
// penalty_backward and penalty_double_backward receive (through autograd) scalars the forward already
// accepted, and a bad scalar there gives bad numbers, never an out-of-bounds access. Their tensor checks
// stay: shapes, dtypes and devices are the kernels' memory-safety preconditions.
PenaltyScalars checked_scalars(const char* op, double target, bool one_sided, double weight, double inv_scale,
                               double exponent) {
  TORCH_CHECK_VALUE(std::isfinite(target) && target >= 0, op, ": target must be finite and >= 0, got ", target);
  TORCH_CHECK_VALUE(std::isfinite(weight) && weight >= 0, op, ": weight must be finite and >= 0, got ", weight);
  TORCH_CHECK_VALUE(std::isfinite(inv_scale) && inv_scale > 0, op, ": inv_scale must be finite and > 0, got ",
                    inv_scale);
  TORCH_CHECK_VALUE(std::isfinite(exponent) && exponent >= 1, op, ": exponent must be finite and >= 1, got ",
                    exponent);
  return {target, weight, inv_scale, exponent, one_sided};
}

#ifdef GPKERNELS_WITH_CUDA
#define GPK_CALL(device, fn, ...) \
  ((device).is_cuda() ? cuda::fn(__VA_ARGS__) : cpu::fn(__VA_ARGS__))
#else
#define GPK_CALL(device, fn, ...) cpu::fn(__VA_ARGS__)
#endif

at::Tensor interp(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha) {
  constexpr const char* op = "gpkernels::interp";
  check_rows(op, real, "real");
  check_same(op, fake, real, "fake", "real");
  check_per_sample(op, alpha, real, real.scalar_type(), "alpha");
  c10::OptionalDeviceGuard guard(real.device());
  const at::Tensor r = as_rows(real);
  const at::Tensor f = rows_like(fake, r);
  const at::Tensor a = alpha.contiguous();
  at::Tensor out = at::empty_like(r);
  GPK_CALL(real.device(), interp, r, f, a, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> interp_backward(const at::Tensor& grad, const at::Tensor& real,
                                                               const at::Tensor& fake, const at::Tensor& alpha) {
  constexpr const char* op = "gpkernels::interp_backward";
  check_rows(op, grad, "grad");
  check_same(op, real, grad, "real", "grad");
  check_same(op, fake, grad, "fake", "grad");
  check_per_sample(op, alpha, grad, grad.scalar_type(), "alpha");
  c10::OptionalDeviceGuard guard(grad.device());
  const at::Tensor g = as_rows(grad);
  const at::Tensor r = rows_like(real, g);
  const at::Tensor f = rows_like(fake, g);
  at::Tensor g_real = at::empty_like(g);
  at::Tensor g_fake = at::empty_like(g);
  at::Tensor g_alpha = at::empty({grad.size(0)}, alpha.options());
  GPK_CALL(grad.device(), interp_backward, g, r, f, alpha.contiguous(), g_real, g_fake, g_alpha);
  return {g_real, g_fake, g_alpha};
}

std::tuple<at::Tensor, at::Tensor> penalty_forward(const at::Tensor& grads, double target, bool one_sided,
                                                   double weight, double inv_scale, double exponent) {
  constexpr const char* op = "gpkernels::penalty_forward";
  check_rows(op, grads, "grads");
  const auto p = checked_scalars(op, target, one_sided, weight, inv_scale, exponent);
  c10::OptionalDeviceGuard guard(grads.device());
  const auto opts = grads.options().dtype(accum_dtype(grads.scalar_type()));
  at::Tensor values = at::empty({grads.size(0)}, opts);
  at::Tensor norms = at::empty({grads.size(0)}, opts);
  GPK_CALL(grads.device(), penalty_forward, as_rows(grads), p, values, norms);
  return {values, norms};
}

at::Tensor penalty_backward(const at::Tensor& grad_values, const at::Tensor& grads, const at::Tensor& norms,
                            double target, bool one_sided, double weight, double inv_scale, double exponent) {
  constexpr const char* op = "gpkernels::penalty_backward";
  check_rows(op, grads, "grads");
  const auto acc = accum_dtype(grads.scalar_type());
  check_per_sample(op, grad_values, grads, acc, "grad_values");
  check_per_sample(op, norms, grads, acc, "norms");
  const PenaltyScalars p{target, weight, inv_scale, exponent, one_sided};  // checked by penalty_forward
  c10::OptionalDeviceGuard guard(grads.device());
  const at::Tensor g = as_rows(grads);
  at::Tensor dgrads = at::empty_like(g);
  GPK_CALL(grads.device(), penalty_backward, grad_values.contiguous(), g, norms.contiguous(), p, dgrads);
  return dgrads;
}

std::tuple<at::Tensor, at::Tensor> penalty_double_backward(const at::Tensor& v, const at::Tensor& grad_values,
                                                           const at::Tensor& grads, double target,
                                                           bool one_sided, double weight, double inv_scale,
                                                           double exponent) {
  constexpr const char* op = "gpkernels::penalty_double_backward";
  check_rows(op, grads, "grads");
  check_same(op, v, grads, "v", "grads");
  const auto acc = accum_dtype(grads.scalar_type());
  check_per_sample(op, grad_values, grads, acc, "grad_values");
  const PenaltyScalars p{target, weight, inv_scale, exponent, one_sided};  // checked by penalty_forward
  c10::OptionalDeviceGuard guard(grads.device());
  const at::Tensor g = as_rows(grads);
  const at::Tensor vr = rows_like(v, g);
  at::Tensor d_grad_values = at::empty({grads.size(0)}, grad_values.options());
  at::Tensor d_grads = at::empty_like(g);
  GPK_CALL(grads.device(), penalty_double_backward, vr, grad_values.contiguous(), g, p, d_grad_values, d_grads);
  return {d_grad_values, d_grads};
}

}  // namespace

TORCH_LIBRARY(gpkernels, m) {
  m.def("interp(Tensor real, Tensor fake, Tensor alpha) -> Tensor");
  m.def("interp_backward(Tensor grad, Tensor real, Tensor fake, Tensor alpha) -> (Tensor, Tensor, Tensor)");
  m.def("penalty_forward(Tensor grads, float target, bool one_sided, float weight, float inv_scale,"
        " float exponent) -> (Tensor, Tensor)");
  m.def("penalty_backward(Tensor grad_values, Tensor grads, Tensor norms, float target, bool one_sided,"
        " float weight, float inv_scale, float exponent) -> Tensor");
  m.def("penalty_double_backward(Tensor v, Tensor grad_values, Tensor grads, float target, bool one_sided,"
        " float weight, float inv_scale, float exponent) -> (Tensor, Tensor)");
}

#define GPK_REGISTER_IMPLS(m)                                      \
  m.impl("interp", &interp);                                       \
  m.impl("interp_backward", &interp_backward);                     \
  m.impl("penalty_forward", &penalty_forward);                     \
  m.impl("penalty_backward", &penalty_backward);                   \
  m.impl("penalty_double_backward", &penalty_double_backward);

TORCH_LIBRARY_IMPL(gpkernels, CPU, m) { GPK_REGISTER_IMPLS(m) }

#ifdef GPKERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(gpkernels, CUDA, m) { GPK_REGISTER_IMPLS(m) }
#endif

}  // namespace gpkernels

// The Python module only reports how the extension was built; the ops are reached through torch.ops.
//   with_cuda       whether the CUDA kernels are compiled in
//   cuda_archs      nvcc's __CUDA_ARCH_LIST__: the virtual architectures it compiled (e.g. "800,900")
//   cuda_sass       the GPUs the kernels carry machine code for, from setup.py's -gencode flags ("80,90";
//                   None when the build could not say); cuda_ptx: the PTX they carry ("90"), which the driver
//                   compiles for that and any newer GPU. gpkernels/backends/native.py refuses a GPU they miss.
//   torch_version   the torch headers it was compiled against ("2.14.1")
#define GPK_BUILD_STR_(...) #__VA_ARGS__
#define GPK_BUILD_STR(...) GPK_BUILD_STR_(__VA_ARGS__)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
#ifdef GPKERNELS_WITH_CUDA
  mod.attr("with_cuda") = true;
  mod.attr("cuda_archs") = std::string(gpkernels::cuda::built_archs());
#else
  mod.attr("with_cuda") = false;
  mod.attr("cuda_archs") = std::string();
#endif
#if defined(GPKERNELS_WITH_CUDA) && defined(GPKERNELS_CUDA_SASS) && defined(GPKERNELS_CUDA_PTX)
  mod.attr("cuda_sass") = std::string(GPK_BUILD_STR(GPKERNELS_CUDA_SASS));
  mod.attr("cuda_ptx") = std::string(GPK_BUILD_STR(GPKERNELS_CUDA_PTX));
#elif defined(GPKERNELS_WITH_CUDA)
  mod.attr("cuda_sass") = pybind11::none();
  mod.attr("cuda_ptx") = pybind11::none();
#else
  mod.attr("cuda_sass") = std::string();
  mod.attr("cuda_ptx") = std::string();
#endif
  mod.attr("torch_version") = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                              "." + std::to_string(TORCH_VERSION_PATCH);
}
