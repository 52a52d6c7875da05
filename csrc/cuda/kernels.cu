// CUDA kernels of gpkernels. The per-sample arithmetic comes from common/penalty_math.h, shared with the
// CPU kernels; this file only decides how memory is walked.
//
// Two kinds of pass:
//  - Row reductions use a 2-D grid (chunk of a row x row) so that even B = 1 fills the GPU. Each block
//    writes one partial sum to a workspace [B, nchunks]; a finalize kernel (one warp per row) adds the
//    partials in a fixed order and applies the per-row math. No atomics: results are deterministic.
//  - Elementwise passes use a 1-D grid-stride loop over all B*N elements.
// Every block has kThreads threads (block_reduce_sum relies on it).
#include <ATen/Dispatch.h>
#include <ATen/core/TensorBase.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

#include "../common/penalty_math.h"
#include "../gpkernels.h"

namespace gpkernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
// About 8 resident blocks of kThreads per SM on a 132-SM H100: enough blocks in flight to saturate
// memory bandwidth with B = 1.
constexpr int64_t kTargetBlocks = 8 * 132;
// A chunk this long amortises the block reduction and the partial's write.
constexpr int64_t kMinChunk = 4096;
constexpr int64_t kMaxChunks = 1024;
constexpr int64_t kMaxGridY = 65535;  // hardware limit of gridDim.y; rows beyond it are looped over
// Grid-stride loops need no more blocks than a few waves of the whole GPU.
constexpr int64_t kMaxLoopBlocks = 32 * 132;

// float for float/half/bfloat16, double for double: the same type the CPU kernels accumulate in.
template <typename scalar_t>
using acc_t_of = math::accum_t<scalar_t>;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// B samples of N elements each (see the layout contract in gpkernels.h).
struct RowShape {
  int64_t B, N;
  explicit RowShape(const at::TensorBase& rows)
      : B(rows.size(0)), N(rows.size(0) > 0 ? rows.numel() / rows.size(0) : 0) {}
  int64_t total() const { return B * N; }
};

// How a row reduction splits each row into chunks.
struct ReducePlan {
  int64_t nchunks = 0;  // 0 when N == 0: nothing to reduce, every row sums to 0
  int64_t chunk_len = 0;
  dim3 grid{1, 1, 1};

  ReducePlan(int64_t B, int64_t N) {
    if (N <= 0 || B <= 0) return;
    int64_t n = std::min({ceil_div(kTargetBlocks, B), ceil_div(N, kMinChunk), kMaxChunks});
    n = std::max<int64_t>(n, 1);
    chunk_len = ceil_div(N, n);
    // Recomputed so that no chunk is empty: (nchunks - 1) * chunk_len < N.
    nchunks = ceil_div(N, chunk_len);
    grid = dim3(static_cast<unsigned>(nchunks), static_cast<unsigned>(std::min(B, kMaxGridY)), 1);
  }
};

// Blocks for a grid-stride loop over `work` items, kThreads items per block per step.
inline unsigned loop_blocks(int64_t work) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(work, kThreads), kMaxLoopBlocks)));
}

template <typename acc_t>
math::PenaltyParams<acc_t> params_of(const PenaltyScalars& p) {
  return {static_cast<acc_t>(p.target), static_cast<acc_t>(p.weight), static_cast<acc_t>(p.inv_scale),
          p.one_sided};
}

// A workspace of n accumulation-type values on `like`'s device, allocated on the current stream (the
// caching allocator makes freeing it at the end of the call safe for the kernels queued on that stream).
template <typename acc_t>
at::TensorBase make_workspace(const at::TensorBase& like, int64_t n) {
  return at::detail::empty_cuda({n}, c10::CppTypeToScalarType<acc_t>::value, like.device(), std::nullopt);
}

#define GPK_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

// ---------------------------------------------------------------------------------------------------------
// Device helpers

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Sum over the 32 lanes of a warp; the result is valid in lane 0. All 32 lanes must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_reduce_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum over the kThreads threads of a block; the result is valid in thread 0. Every thread of the block
// must call it. It ends with a barrier after the last read of `shared`, so the caller may call it again
// right away (e.g. for the next row) without racing on `shared`.
template <typename acc_t>
__device__ __forceinline__ acc_t block_reduce_sum(acc_t v, acc_t* shared) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = warp_reduce_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  acc_t partial = (threadIdx.x < kWarps) ? shared[threadIdx.x] : acc_t(0);
  __syncthreads();
  if (warp == 0) partial = warp_reduce_sum(partial);
  return partial;
}

// Sum of partials[0, nchunks) in a fixed order, by the 32 lanes of a warp; valid in lane 0.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum_partials(const acc_t* partials, int64_t nchunks) {
  acc_t s = acc_t(0);
  for (int64_t c = threadIdx.x % kWarpSize; c < nchunks; c += kWarpSize) s += partials[c];
  return warp_reduce_sum(s);
}

// Index of a warp across the grid, and the number of warps in the grid, for warp-per-row loops.
__device__ __forceinline__ int64_t global_warp() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
}
__device__ __forceinline__ int64_t grid_warps() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
}

// Tracks (row, col) = (e / N, e % N) along a grid-stride loop with two divisions per thread instead of a
// 64-bit division per element. Invariant: e == row * N + col, 0 <= col < N. Needs N > 0.
struct RowCursor {
  int64_t row, col, drow, dcol, N;
  __device__ __forceinline__ RowCursor(int64_t e, int64_t stride, int64_t n) : N(n) {
    row = e / n;
    col = e - row * n;
    drow = stride / n;
    dcol = stride - drow * n;
  }
  // e += stride: col + dcol < 2N, so at most one carry into row.
  __device__ __forceinline__ void advance() {
    row += drow;
    col += dcol;
    if (col >= N) {
      col -= N;
      ++row;
    }
  }
};

// ---------------------------------------------------------------------------------------------------------
// interp: out = a_i real + (1 - a_i) fake

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    interp_kernel(const scalar_t* real, const scalar_t* fake, const scalar_t* alpha, scalar_t* out,
                  int64_t total, int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  RowCursor cur(e, stride, N);
  for (; e < total; e += stride, cur.advance()) {
    const acc_t a = static_cast<acc_t>(alpha[cur.row]);
    out[e] = static_cast<scalar_t>(
        math::lerp<acc_t>(a, static_cast<acc_t>(real[e]), static_cast<acc_t>(fake[e])));
  }
}

// ---------------------------------------------------------------------------------------------------------
// interp_backward: g_real = a_i gx, g_fake = (1 - a_i) gx, g_alpha_i = <real_i - fake_i, gx_i>.
// The elementwise writes happen in the reduction pass, so every input element is read once.
// __restrict__ lets the unrolled loop issue its loads ahead of the previous iterations' stores; it holds
// because the outputs (g_real, g_fake, the workspace) are fresh allocations of the op wrapper.

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    interp_backward_partials_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ real,
                                    const scalar_t* __restrict__ fake, const scalar_t* __restrict__ alpha,
                                    scalar_t* __restrict__ g_real, scalar_t* __restrict__ g_fake,
                                    acc_t* __restrict__ partials, int64_t B, int64_t N, int64_t chunk_len) {
  __shared__ acc_t shared[kWarps];
  const int64_t chunk = blockIdx.x;
  const int64_t nchunks = gridDim.x;
  const int64_t begin = chunk * chunk_len;
  const int64_t end = min64(N, begin + chunk_len);
  for (int64_t row = blockIdx.y; row < B; row += gridDim.y) {
    const int64_t base = row * N;
    const acc_t a = static_cast<acc_t>(alpha[row]);
    const acc_t b = acc_t(1) - a;
    acc_t acc = acc_t(0);
#pragma unroll 2  // 4 makes ptxas spill a register on sm_90 for half and bfloat16
    for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
      const int64_t e = base + j;
      const acc_t gx = static_cast<acc_t>(grad[e]);
      g_real[e] = static_cast<scalar_t>(a * gx);
      g_fake[e] = static_cast<scalar_t>(b * gx);
      acc += (static_cast<acc_t>(real[e]) - static_cast<acc_t>(fake[e])) * gx;
    }
    acc = block_reduce_sum(acc, shared);
    if (threadIdx.x == 0) partials[row * nchunks + chunk] = acc;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    interp_backward_finalize_kernel(const acc_t* partials, scalar_t* g_alpha, int64_t B, int64_t nchunks) {
  for (int64_t row = global_warp(); row < B; row += grid_warps()) {
    const acc_t s = warp_sum_partials(partials + row * nchunks, nchunks);
    if (threadIdx.x % kWarpSize == 0) g_alpha[row] = static_cast<scalar_t>(s);
  }
}

// ---------------------------------------------------------------------------------------------------------
// penalty_forward: n_i = s ||g_i||, value_i = w d_i^2 (row_norm, row_value).

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sumsq_partials_kernel(const scalar_t* grads, acc_t* partials, int64_t B, int64_t N, int64_t chunk_len) {
  __shared__ acc_t shared[kWarps];
  const int64_t chunk = blockIdx.x;
  const int64_t nchunks = gridDim.x;
  const int64_t begin = chunk * chunk_len;
  const int64_t end = min64(N, begin + chunk_len);
  for (int64_t row = blockIdx.y; row < B; row += gridDim.y) {
    const scalar_t* g = grads + row * N;
    acc_t acc = acc_t(0);
#pragma unroll 4
    for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
      const acc_t x = static_cast<acc_t>(g[j]);
      acc += x * x;
    }
    acc = block_reduce_sum(acc, shared);
    if (threadIdx.x == 0) partials[row * nchunks + chunk] = acc;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    penalty_forward_finalize_kernel(const acc_t* partials, acc_t* values, acc_t* norms, int64_t B,
                                    int64_t nchunks, math::PenaltyParams<acc_t> p) {
  for (int64_t row = global_warp(); row < B; row += grid_warps()) {
    const acc_t sumsq = warp_sum_partials(partials + row * nchunks, nchunks);
    if (threadIdx.x % kWarpSize == 0) {
      const acc_t n = math::row_norm(sumsq, p);
      norms[row] = n;
      values[row] = math::row_value(n, p);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// penalty_backward: dvalue_i/dg_i = c_i g_i with c_i = 2 w s d_i (s / n_i) (row_grad_coef; 0 where
// ||g_i|| = 0, exactly 2 w s^2 where t = 0), so dgrads_i = gout_i c_i g_i. c_i comes from the forward's
// norms: no reduction here.

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    penalty_backward_kernel(const acc_t* gout, const acc_t* norms, const scalar_t* grads, scalar_t* dgrads,
                            int64_t total, int64_t N, math::PenaltyParams<acc_t> p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  RowCursor cur(e, stride, N);
  // The coefficient changes only with the row; recompute it only when the row does.
  int64_t coef_row = -1;
  acc_t coef = acc_t(0);
  for (; e < total; e += stride, cur.advance()) {
    if (cur.row != coef_row) {
      coef_row = cur.row;
      coef = gout[coef_row] * math::row_grad_coef(norms[coef_row], p);
    }
    dgrads[e] = static_cast<scalar_t>(coef * static_cast<acc_t>(grads[e]));
  }
}

// ---------------------------------------------------------------------------------------------------------
// penalty_double_backward. The backward is B(gout, g) = gout c(g) g; against an incoming v:
//   dB/dgout_i = c_i <g_i, v_i>
//   dB/dg_i    = gout_i (c_i v_i + k_i <g_i, v_i> g_i),  k_i = 2 w t s (s / n_i)^3  (row_second_coef;
//                0 where t = 0, ||g_i|| = 0, or one-sided with n_i <= t)
// n_i is recomputed from g (one pass gives both <g_i, v_i> and ||g_i||^2), then
// d_grads_i = a_i v_i + b_i g_i with a_i = gout_i c_i, b_i = gout_i k_i <g_i, v_i>.

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    dot_sumsq_partials_kernel(const scalar_t* v, const scalar_t* grads, acc_t* dot_partials,
                              acc_t* sumsq_partials, int64_t B, int64_t N, int64_t chunk_len) {
  __shared__ acc_t shared[kWarps];
  const int64_t chunk = blockIdx.x;
  const int64_t nchunks = gridDim.x;
  const int64_t begin = chunk * chunk_len;
  const int64_t end = min64(N, begin + chunk_len);
  for (int64_t row = blockIdx.y; row < B; row += gridDim.y) {
    const int64_t base = row * N;
    acc_t dot = acc_t(0);
    acc_t sumsq = acc_t(0);
#pragma unroll 4
    for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
      const acc_t g = static_cast<acc_t>(grads[base + j]);
      dot += g * static_cast<acc_t>(v[base + j]);
      sumsq += g * g;
    }
    dot = block_reduce_sum(dot, shared);
    sumsq = block_reduce_sum(sumsq, shared);
    if (threadIdx.x == 0) {
      dot_partials[row * nchunks + chunk] = dot;
      sumsq_partials[row * nchunks + chunk] = sumsq;
    }
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    penalty_double_backward_finalize_kernel(const acc_t* dot_partials, const acc_t* sumsq_partials,
                                            const acc_t* gout, acc_t* d_gout, acc_t* coef_a, acc_t* coef_b,
                                            int64_t B, int64_t nchunks, math::PenaltyParams<acc_t> p) {
  for (int64_t row = global_warp(); row < B; row += grid_warps()) {
    const acc_t dot = warp_sum_partials(dot_partials + row * nchunks, nchunks);
    const acc_t sumsq = warp_sum_partials(sumsq_partials + row * nchunks, nchunks);
    if (threadIdx.x % kWarpSize == 0) {
      const acc_t n = math::row_norm(sumsq, p);
      const acc_t c = math::row_grad_coef(n, p);
      const acc_t k = math::row_second_coef(n, p);
      const acc_t go = gout[row];
      d_gout[row] = c * dot;
      coef_a[row] = go * c;
      coef_b[row] = go * k * dot;
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    penalty_double_backward_apply_kernel(const acc_t* coef_a, const acc_t* coef_b, const scalar_t* v,
                                         const scalar_t* grads, scalar_t* d_grads, int64_t total, int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  RowCursor cur(e, stride, N);
  for (; e < total; e += stride, cur.advance()) {
    const acc_t a = coef_a[cur.row];
    const acc_t b = coef_b[cur.row];
    d_grads[e] = static_cast<scalar_t>(a * static_cast<acc_t>(v[e]) + b * static_cast<acc_t>(grads[e]));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Host entry points (the caller has set the device guard and validated layouts and dtypes).

void interp(const at::TensorBase& real, const at::TensorBase& fake, const at::TensorBase& alpha,
            const at::TensorBase& out) {
  const RowShape shape(real);
  const int64_t total = shape.total();
  if (total == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  GPK_DISPATCH(real.scalar_type(), "gpkernels::interp (cuda)", [&] {
    using acc_t = acc_t_of<scalar_t>;
    interp_kernel<scalar_t, acc_t><<<loop_blocks(total), kThreads, 0, stream>>>(
        real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), total, shape.N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void interp_backward(const at::TensorBase& grad, const at::TensorBase& real, const at::TensorBase& fake,
                     const at::TensorBase& alpha, const at::TensorBase& g_real, const at::TensorBase& g_fake,
                     const at::TensorBase& g_alpha) {
  const RowShape shape(grad);
  const ReducePlan plan(shape.B, shape.N);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  GPK_DISPATCH(grad.scalar_type(), "gpkernels::interp_backward (cuda)", [&] {
    using acc_t = acc_t_of<scalar_t>;
    at::TensorBase ws;
    acc_t* partials = nullptr;
    if (plan.nchunks > 0) {
      ws = make_workspace<acc_t>(grad, shape.B * plan.nchunks);
      partials = ws.mutable_data_ptr<acc_t>();
      interp_backward_partials_kernel<scalar_t, acc_t><<<plan.grid, kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(),
          alpha.const_data_ptr<scalar_t>(), g_real.mutable_data_ptr<scalar_t>(),
          g_fake.mutable_data_ptr<scalar_t>(), partials, shape.B, shape.N, plan.chunk_len);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    interp_backward_finalize_kernel<scalar_t, acc_t>
        <<<loop_blocks(shape.B * kWarpSize), kThreads, 0, stream>>>(
            partials, g_alpha.mutable_data_ptr<scalar_t>(), shape.B, plan.nchunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void penalty_forward(const at::TensorBase& grads, const PenaltyScalars& scalars, const at::TensorBase& values,
                     const at::TensorBase& norms) {
  const RowShape shape(grads);
  const ReducePlan plan(shape.B, shape.N);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  GPK_DISPATCH(grads.scalar_type(), "gpkernels::penalty_forward (cuda)", [&] {
    using acc_t = acc_t_of<scalar_t>;
    const auto p = params_of<acc_t>(scalars);
    at::TensorBase ws;
    acc_t* partials = nullptr;
    if (plan.nchunks > 0) {
      ws = make_workspace<acc_t>(grads, shape.B * plan.nchunks);
      partials = ws.mutable_data_ptr<acc_t>();
      sumsq_partials_kernel<scalar_t, acc_t><<<plan.grid, kThreads, 0, stream>>>(
          grads.const_data_ptr<scalar_t>(), partials, shape.B, shape.N, plan.chunk_len);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    penalty_forward_finalize_kernel<acc_t><<<loop_blocks(shape.B * kWarpSize), kThreads, 0, stream>>>(
        partials, values.mutable_data_ptr<acc_t>(), norms.mutable_data_ptr<acc_t>(), shape.B, plan.nchunks,
        p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void penalty_backward(const at::TensorBase& gout, const at::TensorBase& grads, const at::TensorBase& norms,
                      const PenaltyScalars& scalars, const at::TensorBase& dgrads) {
  const RowShape shape(grads);
  const int64_t total = shape.total();
  if (total == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  GPK_DISPATCH(grads.scalar_type(), "gpkernels::penalty_backward (cuda)", [&] {
    using acc_t = acc_t_of<scalar_t>;
    const auto p = params_of<acc_t>(scalars);
    penalty_backward_kernel<scalar_t, acc_t><<<loop_blocks(total), kThreads, 0, stream>>>(
        gout.const_data_ptr<acc_t>(), norms.const_data_ptr<acc_t>(), grads.const_data_ptr<scalar_t>(),
        dgrads.mutable_data_ptr<scalar_t>(), total, shape.N, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void penalty_double_backward(const at::TensorBase& v, const at::TensorBase& gout, const at::TensorBase& grads,
                             const PenaltyScalars& scalars, const at::TensorBase& d_gout,
                             const at::TensorBase& d_grads) {
  const RowShape shape(grads);
  const ReducePlan plan(shape.B, shape.N);
  const int64_t total = shape.total();
  const int64_t np = shape.B * plan.nchunks;  // partials per reduced quantity
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  GPK_DISPATCH(grads.scalar_type(), "gpkernels::penalty_double_backward (cuda)", [&] {
    using acc_t = acc_t_of<scalar_t>;
    const auto p = params_of<acc_t>(scalars);
    // Layout: [dot partials (np) | sumsq partials (np) | coef_a (B) | coef_b (B)]
    at::TensorBase ws = make_workspace<acc_t>(grads, 2 * np + 2 * shape.B);
    acc_t* dot_partials = ws.mutable_data_ptr<acc_t>();
    acc_t* sumsq_partials = dot_partials + np;
    acc_t* coef_a = sumsq_partials + np;
    acc_t* coef_b = coef_a + shape.B;
    if (plan.nchunks > 0) {
      dot_sumsq_partials_kernel<scalar_t, acc_t><<<plan.grid, kThreads, 0, stream>>>(
          v.const_data_ptr<scalar_t>(), grads.const_data_ptr<scalar_t>(), dot_partials, sumsq_partials,
          shape.B, shape.N, plan.chunk_len);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    penalty_double_backward_finalize_kernel<acc_t>
        <<<loop_blocks(shape.B * kWarpSize), kThreads, 0, stream>>>(
            dot_partials, sumsq_partials, gout.const_data_ptr<acc_t>(), d_gout.mutable_data_ptr<acc_t>(),
            coef_a, coef_b, shape.B, plan.nchunks, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (total > 0) {
      penalty_double_backward_apply_kernel<scalar_t, acc_t><<<loop_blocks(total), kThreads, 0, stream>>>(
          coef_a, coef_b, v.const_data_ptr<scalar_t>(), grads.const_data_ptr<scalar_t>(),
          d_grads.mutable_data_ptr<scalar_t>(), total, shape.N);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

#define GPK_STRINGIFY_(...) #__VA_ARGS__
#define GPK_STRINGIFY(...) GPK_STRINGIFY_(__VA_ARGS__)

const char* built_archs() {
#ifdef __CUDA_ARCH_LIST__
  return GPK_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

}  // namespace cuda
}  // namespace gpkernels
