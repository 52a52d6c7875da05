// CUDA kernels of gpkernels. The per-sample arithmetic comes from common/penalty_math.h, shared with the
// CPU kernels; this file only decides how memory is walked.
//
// Two kinds of pass:
//  - Row reductions (interp_backward, penalty_forward, penalty_double_backward) share one partial-sum kernel
//    and one finalize kernel, templated on a mode (see "Reduction modes"; the Triton backend has the same
//    design). row_partials_kernel runs a 2-D grid (chunk of a row x row), so that even B = 1 fills the GPU,
//    reads every input element once (writing the mode's elementwise outputs in the same pass) and writes one
//    partial per (row, chunk) and summed quantity to a workspace [kParts, B, nchunks]. row_finalize_kernel
//    (one warp per row) adds each row's partials in chunk order and runs the mode's per-row epilogue.
//    No atomics: the results are deterministic on a given GPU (the chunking follows its SM count, so GPUs
//    with different SM counts may round differently). Short rows (N <= kThreads) in large batches take
//    row_warp_kernel instead, one warp per row in one pass, with bitwise the same sums.
//  - Elementwise passes (elementwise_kernel) use a 1-D grid-stride loop over all B*N elements, in 16-byte
//    packs where every pointer is 16-byte aligned. (The row reductions keep scalar loads: packs would change
//    which thread sums which elements, and so the rounding of every sum.)
// Grid sizes scale with the current device's SM count. Every block has kThreads threads (block_reduce_sums
// relies on it).
#include <ATen/Dispatch.h>
#include <ATen/core/TensorBase.h>
#include <ATen/cuda/CUDAContext.h>
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
// About 8 resident blocks of kThreads per SM: enough in flight to saturate memory bandwidth with B = 1.
constexpr int64_t kTargetBlocksPerSM = 8;
// A chunk this long amortises the block reduction and the partials' writes.
constexpr int64_t kMinChunk = 4096;
constexpr int64_t kMaxChunks = 1024;
constexpr int64_t kMaxGridY = 65535;  // hardware limit of gridDim.y; rows beyond it are looped over
// Rows of at most kThreads elements go one warp per row (row_warp_kernel) from this many rows per SM on.
constexpr int64_t kWarpRowsPerSM = 64;
// Grid-stride loops need no more blocks than a few waves of the whole GPU.
constexpr int64_t kMaxLoopBlocksPerSM = 32;

// float for float/half/bfloat16, double for double: the same type the CPU kernels accumulate in.
template <typename scalar_t>
using acc_t_of = math::accum_t<scalar_t>;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Multiprocessors of the current device, which the op wrapper's device guard has set (torch caches the
// properties).
inline int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

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

  explicit ReducePlan(const RowShape& s) {
    if (s.N <= 0 || s.B <= 0) return;
    const int64_t target_blocks = kTargetBlocksPerSM * sm_count();
    int64_t n = std::min({ceil_div(target_blocks, s.B), ceil_div(s.N, kMinChunk), kMaxChunks});
    n = std::max<int64_t>(n, 1);
    chunk_len = ceil_div(s.N, n);
    // Recomputed so that no chunk is empty: (nchunks - 1) * chunk_len < N.
    nchunks = ceil_div(s.N, chunk_len);
    grid = dim3(static_cast<unsigned>(nchunks), static_cast<unsigned>(std::min(s.B, kMaxGridY)), 1);
  }
};

// Blocks for a grid-stride loop over `work` items, kThreads items per block per step.
inline unsigned loop_blocks(int64_t work) {
  const int64_t cap = kMaxLoopBlocksPerSM * sm_count();
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(work, kThreads), cap)));
}

template <typename acc_t>
math::PenaltyParams<acc_t> params_of(const PenaltyScalars& p) {
  return {static_cast<acc_t>(p.target), static_cast<acc_t>(p.weight), static_cast<acc_t>(p.inv_scale),
          static_cast<acc_t>(p.exponent), p.one_sided};
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

// Sums over the kThreads threads of a block of K quantities at once (one pair of barriers for all); the
// results are valid in thread 0, in v. shared holds K * kWarps values. Every thread of the block must call it.
// It ends with a barrier after the last read of `shared`, so the caller may call it again right away (e.g.
// for the next row) without racing on `shared`.
template <typename acc_t, int K>
__device__ __forceinline__ void block_reduce_sums(acc_t (&v)[K], acc_t* shared) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int q = 0; q < K; ++q) {
    v[q] = warp_reduce_sum(v[q]);
    if (lane == 0) shared[q * kWarps + warp] = v[q];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int q = 0; q < K; ++q) v[q] = warp_reduce_sum(lane < kWarps ? shared[q * kWarps + lane] : acc_t(0));
  }
  __syncthreads();
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
// Elementwise passes: out = op(in0, in1) element by element, with per-row state that op.set_row(row) loads
// (alpha_i, the backward's multiplier, the double backward's terms) whenever the row changes.
//
// kVec (every row pointer 16-byte aligned, checked on the host): each thread moves packs of 16 bytes, one
// vector load per input and one vector store; a pack that crosses a row boundary (or rows shorter than a
// pack) goes element by element, and so do the last total % V elements. The arithmetic per element is the
// same either way, so the results are too.

template <typename T, int V>
struct alignas(16) Pack {
  T v[V];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <bool kVec, typename Op, typename scalar_t = typename Op::scalar_t>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(Op op, const scalar_t* __restrict__ in0, const scalar_t* __restrict__ in1,
                       scalar_t* __restrict__ out, int64_t total, int64_t N) {
  using acc_t = typename Op::acc_t;
  constexpr int V = kVec ? 16 / static_cast<int>(sizeof(scalar_t)) : 1;
  using P = Pack<scalar_t, V>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t packs = total / V;
  int64_t state_row = -1;  // the row whose state op holds
  // One element by itself, its row given.
  auto one = [&](int64_t e, int64_t row) {
    if (row != state_row) {
      op.set_row(row);
      state_row = row;
    }
    acc_t y = acc_t(0);
    if constexpr (Op::kInputs > 1) y = static_cast<acc_t>(in1[e]);
    out[e] = static_cast<scalar_t>(op(static_cast<acc_t>(in0[e]), y));
  };
  RowCursor cur(tid * V, stride * V, N);
  for (int64_t q = tid; q < packs; q += stride, cur.advance()) {
    const int64_t e = q * V;
    if (V == 1 || cur.col + V <= N) {  // the whole pack in row cur.row
      if (cur.row != state_row) {
        op.set_row(cur.row);
        state_row = cur.row;
      }
      const P x = *reinterpret_cast<const P*>(in0 + e);
      P o;
      if constexpr (Op::kInputs > 1) {
        const P y = *reinterpret_cast<const P*>(in1 + e);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          o.v[k] = static_cast<scalar_t>(op(static_cast<acc_t>(x.v[k]), static_cast<acc_t>(y.v[k])));
        }
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) o.v[k] = static_cast<scalar_t>(op(static_cast<acc_t>(x.v[k]), acc_t(0)));
      }
      *reinterpret_cast<P*>(out + e) = o;
    } else {
      int64_t row = cur.row, col = cur.col;
#pragma unroll 1
      for (int k = 0; k < V; ++k) {
        one(e + k, row);
        if (++col == N) {
          col = 0;
          ++row;
        }
      }
    }
  }
  if (kVec && tid < total - packs * V) {
    const int64_t e = packs * V + tid;
    one(e, e / N);
  }
}

// Launches elementwise_kernel over the B*N elements, with packs of 16 bytes where every pointer allows.
template <typename Op, typename scalar_t = typename Op::scalar_t>
void launch_elementwise(const Op& op, const scalar_t* in0, const scalar_t* in1, scalar_t* out, int64_t total,
                        int64_t N, cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(scalar_t));
  if (aligned16(in0) && (Op::kInputs < 2 || aligned16(in1)) && aligned16(out)) {
    elementwise_kernel<true, Op><<<loop_blocks(ceil_div(total, V)), kThreads, 0, stream>>>(op, in0, in1, out, total,
                                                                                           N);
  } else {
    elementwise_kernel<false, Op><<<loop_blocks(total), kThreads, 0, stream>>>(op, in0, in1, out, total, N);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// interp: out = a_i real + (1 - a_i) fake (in0 = real, in1 = fake)
template <typename T>
struct InterpOp {
  using scalar_t = T;
  using acc_t = acc_t_of<T>;
  static constexpr int kInputs = 2;
  const T* alpha;
  acc_t a = acc_t(0);
  __device__ __forceinline__ void set_row(int64_t row) { a = static_cast<acc_t>(alpha[row]); }
  __device__ __forceinline__ acc_t operator()(acc_t real, acc_t fake) const { return math::lerp<acc_t>(a, real, fake); }
};

// penalty_backward: dvalue_i/dg_i = c_i g_i with c_i = w p phi(d_i) s (s / n_i) (grad_multiplier; p = 2:
// 2 w s d_i (s / n_i), exactly 2 w s^2 where t = 0; 0 where ||g_i|| = 0 otherwise), so
// dgrads_i = gout_i c_i g_i, applied as coef * (g * scale) (scale = 1 but at extreme norms). c_i comes from
// the forward's norms: no reduction here. (in0 = grads)
template <typename T>
struct BackwardOp {
  using scalar_t = T;
  using acc_t = acc_t_of<T>;
  static constexpr int kInputs = 1;
  const acc_t *gout, *norms;
  math::PenaltyParams<acc_t> p;
  acc_t coef = acc_t(0), scale = acc_t(1);
  __device__ __forceinline__ void set_row(int64_t row) {
    const auto m = math::grad_multiplier(math::row_norm_of(norms[row]), gout[row], p);
    coef = m.coef;
    scale = m.scale;
  }
  __device__ __forceinline__ acc_t operator()(acc_t g, acc_t) const { return coef * (g * scale); }
};

// Second pass of penalty_double_backward: d_grads_i = a_i v_i + b_i g_i (terms: [a | b | scale_a | gamma |
// sigma], B each, from DoubleBackwardMode; sigma = 0 but at the smallest norms, math::double_backward_element).
// (in0 = v, in1 = grads)
template <typename T>
struct DoubleBackwardApplyOp {
  using scalar_t = T;
  using acc_t = acc_t_of<T>;
  static constexpr int kInputs = 2;
  const acc_t* terms;
  int64_t B;
  acc_t a = acc_t(0), b = acc_t(0), a_scale = acc_t(1), gamma = acc_t(0), sigma = acc_t(0);
  __device__ __forceinline__ void set_row(int64_t row) {
    a = terms[row];
    b = terms[B + row];
    a_scale = terms[2 * B + row];
    gamma = terms[3 * B + row];
    sigma = terms[4 * B + row];
  }
  __device__ __forceinline__ acc_t operator()(acc_t v, acc_t g) const {
    return sigma == acc_t(0) ? a * v + b * g : math::double_backward_element(a, a_scale, b, gamma, sigma, v, g);
  }
};

// ---------------------------------------------------------------------------------------------------------
// Row reductions. A mode M gives M::scalar_t and M::acc_t, M::kParts (quantities summed per row), M::kUnroll
// (unroll factor of the element loop), m.begin_row(row) (per-row set-up, e.g. alpha_i), m.add(rows, e, acc)
// (element e of the row tensors into acc[0, kParts), writing the outputs of `rows` at e if any) and
// m.finish(row, sums) (the per-row epilogue, run by one thread). The mode is passed by value.

// The row tensors of a reduction: up to three read and two written element by element (null where a mode
// has fewer). They reach row_partials_kernel as separate __restrict__ parameters, where nvcc honours the
// qualifier (on struct members it does not): the unrolled loop may then issue its loads ahead of the
// previous iterations' stores. It holds because the outputs are fresh allocations of the op wrapper.
template <typename scalar_t>
struct Rows {
  const scalar_t *in0 = nullptr, *in1 = nullptr, *in2 = nullptr;
  scalar_t *out0 = nullptr, *out1 = nullptr;
};

template <typename Mode, typename scalar_t = typename Mode::scalar_t, typename acc_t = typename Mode::acc_t>
__global__ void __launch_bounds__(kThreads)
    row_partials_kernel(Mode m, const scalar_t* __restrict__ in0, const scalar_t* __restrict__ in1,
                        const scalar_t* __restrict__ in2, scalar_t* __restrict__ out0, scalar_t* __restrict__ out1,
                        acc_t* __restrict__ partials, int64_t B, int64_t N, int64_t chunk_len) {
  const Rows<scalar_t> rows{in0, in1, in2, out0, out1};
  __shared__ acc_t shared[Mode::kParts * kWarps];
  const int64_t chunk = blockIdx.x;
  const int64_t nchunks = gridDim.x;
  const int64_t begin = chunk * chunk_len;
  const int64_t end = min64(N, begin + chunk_len);
  for (int64_t row = blockIdx.y; row < B; row += gridDim.y) {
    m.begin_row(row);
    const int64_t base = row * N;
    acc_t acc[Mode::kParts] = {};
#pragma unroll(Mode::kUnroll)
    for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) m.add(rows, base + j, acc);
    block_reduce_sums(acc, shared);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int q = 0; q < Mode::kParts; ++q) partials[(q * B + row) * nchunks + chunk] = acc[q];
    }
  }
}

// One warp per row, summing each quantity's partials in a fixed order (lane l takes chunks l, l + 32, ...,
// then a shuffle tree); partials may be null when nchunks == 0 (the sums are then 0).
template <typename Mode, typename acc_t = typename Mode::acc_t>
__global__ void __launch_bounds__(kThreads)
    row_finalize_kernel(Mode m, const acc_t* __restrict__ partials, int64_t B, int64_t nchunks) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / kWarpSize; row < B;
       row += warps) {
    acc_t sums[Mode::kParts];
#pragma unroll
    for (int q = 0; q < Mode::kParts; ++q) {
      const acc_t* part = partials + (q * B + row) * nchunks;
      acc_t s = acc_t(0);
      for (int64_t c = threadIdx.x % kWarpSize; c < nchunks; c += kWarpSize) s += part[c];
      sums[q] = warp_reduce_sum(s);
    }
    if (threadIdx.x % kWarpSize == 0) m.finish(row, sums);
  }
}

// Rows of at most kThreads elements (N <= 256) with many of them: one warp per row and no partials, each row's
// sums bitwise those of the two kernels above. There a row is one chunk (nchunks == 1): thread t of its block
// holds element t (or nothing), warp w's tree gives W_w, block_reduce_sums pairs the W_w as
// ((W0 + W4) + (W2 + W6)) + ((W1 + W5) + (W3 + W7)) (each W_w + 0 first: the lanes past kWarps hold 0), and
// row_finalize_kernel adds 0. Here the warp takes the eight "virtual warps" in turn (elements 32 w + lane) with
// the same shuffle tree, in that pairing order. (x + 0 is x but for -0.)
template <typename Mode, typename scalar_t = typename Mode::scalar_t, typename acc_t = typename Mode::acc_t>
__global__ void __launch_bounds__(kThreads)
    row_warp_kernel(Mode m, const scalar_t* __restrict__ in0, const scalar_t* __restrict__ in1,
                    const scalar_t* __restrict__ in2, scalar_t* __restrict__ out0, scalar_t* __restrict__ out1,
                    int64_t B, int64_t N) {
  static_assert(kWarps == 8, "the pairing below is block_reduce_sums' for 8 warps");
  constexpr int K = Mode::kParts;
  const Rows<scalar_t> rows{in0, in1, in2, out0, out1};
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / kWarpSize; row < B;
       row += warps) {
    m.begin_row(row);
    const int64_t base = row * N;
    // Y_w = W_w + 0, W_w the tree over the elements 32 w + lane of the row (+0 where there are none).
    auto virtual_warp = [&](int w, acc_t (&y)[K]) {
#pragma unroll
      for (int q = 0; q < K; ++q) y[q] = acc_t(0);
      if (static_cast<int64_t>(w) * kWarpSize < N) {
        const int64_t j = static_cast<int64_t>(w) * kWarpSize + lane;
        if (j < N) m.add(rows, base + j, y);
#pragma unroll
        for (int q = 0; q < K; ++q) y[q] = warp_reduce_sum(y[q]);
      }
#pragma unroll
      for (int q = 0; q < K; ++q) y[q] = y[q] + acc_t(0);
    };
    acc_t first[K], second[K], y0[K], y1[K];
    // first = (Y0 + Y4) + (Y2 + Y6)
    virtual_warp(0, y0);
    virtual_warp(4, y1);
#pragma unroll
    for (int q = 0; q < K; ++q) first[q] = y0[q] + y1[q];
    virtual_warp(2, y0);
    virtual_warp(6, y1);
#pragma unroll
    for (int q = 0; q < K; ++q) first[q] = first[q] + (y0[q] + y1[q]);
    // second = (Y1 + Y5) + (Y3 + Y7)
    virtual_warp(1, y0);
    virtual_warp(5, y1);
#pragma unroll
    for (int q = 0; q < K; ++q) second[q] = y0[q] + y1[q];
    virtual_warp(3, y0);
    virtual_warp(7, y1);
#pragma unroll
    for (int q = 0; q < K; ++q) second[q] = second[q] + (y0[q] + y1[q]);
    if (lane == 0) {
      acc_t sums[K];
#pragma unroll
      for (int q = 0; q < K; ++q) sums[q] = (first[q] + second[q]) + acc_t(0);
      m.finish(row, sums);
    }
  }
}

// Both passes of a row reduction on the current stream; `like` is a row tensor of the call (or one pass of
// row_warp_kernel: short rows, many of them).
template <typename Mode, typename scalar_t = typename Mode::scalar_t, typename acc_t = typename Mode::acc_t>
void reduce_rows(const Mode& m, const Rows<scalar_t>& r, const at::TensorBase& like) {
  const RowShape shape(like);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (shape.N > 0 && shape.N <= kThreads && shape.B >= kWarpRowsPerSM * sm_count()) {
    row_warp_kernel<Mode><<<loop_blocks(shape.B * kWarpSize), kThreads, 0, stream>>>(m, r.in0, r.in1, r.in2, r.out0,
                                                                                    r.out1, shape.B, shape.N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const ReducePlan plan(shape);
  at::TensorBase ws;
  acc_t* partials = nullptr;
  if (plan.nchunks > 0) {
    ws = make_workspace<acc_t>(like, Mode::kParts * shape.B * plan.nchunks);
    partials = ws.mutable_data_ptr<acc_t>();
    row_partials_kernel<Mode><<<plan.grid, kThreads, 0, stream>>>(m, r.in0, r.in1, r.in2, r.out0, r.out1, partials,
                                                                  shape.B, shape.N, plan.chunk_len);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  row_finalize_kernel<Mode><<<loop_blocks(shape.B * kWarpSize), kThreads, 0, stream>>>(m, partials, shape.B,
                                                                                      plan.nchunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------------
// Reduction modes

// interp_backward, rows (grad, real, fake -> g_real, g_fake): g_real = a_i gx, g_fake = (1 - a_i) gx,
// g_alpha_i = <real_i - fake_i, gx_i>. The elementwise writes happen in the reduction pass, so every input
// element is read once.
template <typename T>
struct InterpBackwardMode {
  using scalar_t = T;
  using acc_t = acc_t_of<T>;
  static constexpr int kParts = 1;
  static constexpr int kUnroll = 2;  // 4 made ptxas spill a register on sm_90 for half and bfloat16
  const T* alpha;
  T* g_alpha;
  acc_t a = acc_t(0), b = acc_t(0);  // a_i and 1 - a_i of the current row

  __device__ __forceinline__ void begin_row(int64_t row) {
    a = static_cast<acc_t>(alpha[row]);
    b = acc_t(1) - a;
  }
  __device__ __forceinline__ void add(const Rows<T>& r, int64_t e, acc_t (&acc)[kParts]) const {
    const acc_t gx = static_cast<acc_t>(r.in0[e]);
    r.out0[e] = static_cast<T>(a * gx);
    r.out1[e] = static_cast<T>(b * gx);
    acc[0] += (static_cast<acc_t>(r.in1[e]) - static_cast<acc_t>(r.in2[e])) * gx;
  }
  __device__ __forceinline__ void finish(int64_t row, const acc_t (&sums)[kParts]) const {
    g_alpha[row] = static_cast<T>(sums[0]);
  }
};

// The rescue sums of penalty_math.h ("Range"), kept in the same pass: for one element x (and v), the
// sums of (2^R x)^2 and (2^-R x)^2 (and their products with v) beside the plain ones. The scaled-up sum leaves
// out elements that no row rescued upward has, so that it never overflows.
template <typename acc_t>
__device__ __forceinline__ acc_t rescue_up(acc_t x) {
  using Range = math::Range<acc_t>;
  return (fabs(x) < Range::rescue_up_below() ? x : acc_t(0)) * Range::rescue_up();
}

// penalty_forward, rows (grads): n_i = s ||g_i||, value_i = w |d_i|^p (row_norm, row_value) from sum g^2
// (parts: sum g^2, sum (2^R g)^2, sum (2^-R g)^2).
template <typename T>
struct ForwardMode {
  using scalar_t = T;
  using acc_t = acc_t_of<T>;
  static constexpr int kParts = 3;
  static constexpr int kUnroll = 4;
  acc_t *values, *norms;
  math::PenaltyParams<acc_t> p;

  __device__ __forceinline__ void begin_row(int64_t) {}
  __device__ __forceinline__ void add(const Rows<T>& r, int64_t e, acc_t (&acc)[kParts]) const {
    const acc_t x = static_cast<acc_t>(r.in0[e]);
    const acc_t up = rescue_up(x), down = x * math::Range<acc_t>::rescue_down();
    acc[0] += x * x;
    acc[1] += up * up;
    acc[2] += down * down;
  }
  __device__ __forceinline__ void finish(int64_t row, const acc_t (&sums)[kParts]) const {
    const int kind = math::rescue_kind(sums[0]);
    const auto rn = math::row_norm(sums[0], kind, kind > 0 ? sums[1] : sums[2], p);
    norms[row] = rn.n;
    values[row] = math::row_value(rn, p);
  }
};

// penalty_double_backward, rows (grads, v). The backward is B(gout, g) = gout c(g) g; against an incoming v:
//   dB/dgout_i = c_i <g_i, v_i>
//   dB/dg_i    = gout_i (c_i v_i + k_i <g_i, v_i> g_i),  k_i = (dc_i/dn_i) s^2 / n_i  (second_coef_formula;
//                p = 2: 2 w t s (s / n_i)^3; 0 where ||g_i|| = 0, or one-sided with n_i <= t)
// n_i is recomputed from g: one pass sums g^2 and <g, v>, and both again with g scaled by 2^R and 2^-R
// (parts 0-1, 2-3, 4-5; penalty_math.h "Range"). The epilogue (double_backward_terms) writes
// d_gout_i = c_i <g_i, v_i> and the terms of d_grads_i = a_i v_i + b_i g_i, a_i = gout_i c_i,
// b_i = gout_i k_i <g_i, v_i> (at the smallest norms in its projected form), which
// penalty_double_backward_apply_kernel applies.
template <typename T>
struct DoubleBackwardMode {
  using scalar_t = T;
  using acc_t = acc_t_of<T>;
  static constexpr int kParts = 6;
  static constexpr int kUnroll = 4;
  const acc_t* gout;
  acc_t *d_gout, *terms;  // terms: [a | b | scale_a | gamma | sigma], B each
  int64_t B;
  math::PenaltyParams<acc_t> p;

  __device__ __forceinline__ void begin_row(int64_t) {}
  __device__ __forceinline__ void add(const Rows<T>& r, int64_t e, acc_t (&acc)[kParts]) const {
    const acc_t g = static_cast<acc_t>(r.in0[e]);
    const acc_t v = static_cast<acc_t>(r.in1[e]);
    const acc_t up = rescue_up(g), down = g * math::Range<acc_t>::rescue_down();
    acc[0] += g * g;
    acc[1] += g * v;
    acc[2] += up * up;
    acc[3] += up * v;
    acc[4] += down * down;
    acc[5] += down * v;
  }
  __device__ __forceinline__ void finish(int64_t row, const acc_t (&sums)[kParts]) const {
    const int kind = math::rescue_kind(sums[0]);
    const auto rn = math::row_norm(sums[0], kind, kind > 0 ? sums[2] : sums[4], p);
    const math::RowDot<acc_t> dot{sums[1], kind, kind > 0 ? sums[3] : sums[5]};
    const auto t = math::double_backward_terms(rn, gout[row], dot, p);
    d_gout[row] = t.d_gout;
    terms[row] = t.a.coef;
    terms[B + row] = t.b;
    terms[2 * B + row] = t.a.scale;
    terms[3 * B + row] = t.gamma;
    terms[4 * B + row] = t.sigma;
  }
};

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
    launch_elementwise(InterpOp<scalar_t>{alpha.const_data_ptr<scalar_t>()}, real.const_data_ptr<scalar_t>(),
                       fake.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total, shape.N, stream);
  });
}

void interp_backward(const at::TensorBase& grad, const at::TensorBase& real, const at::TensorBase& fake,
                     const at::TensorBase& alpha, const at::TensorBase& g_real, const at::TensorBase& g_fake,
                     const at::TensorBase& g_alpha) {
  GPK_DISPATCH(grad.scalar_type(), "gpkernels::interp_backward (cuda)", [&] {
    const Rows<scalar_t> rows{grad.const_data_ptr<scalar_t>(), real.const_data_ptr<scalar_t>(),
                              fake.const_data_ptr<scalar_t>(), g_real.mutable_data_ptr<scalar_t>(),
                              g_fake.mutable_data_ptr<scalar_t>()};
    reduce_rows(InterpBackwardMode<scalar_t>{alpha.const_data_ptr<scalar_t>(), g_alpha.mutable_data_ptr<scalar_t>()},
                rows, grad);
  });
}

void penalty_forward(const at::TensorBase& grads, const PenaltyScalars& scalars, const at::TensorBase& values,
                     const at::TensorBase& norms) {
  GPK_DISPATCH(grads.scalar_type(), "gpkernels::penalty_forward (cuda)", [&] {
    using acc_t = acc_t_of<scalar_t>;
    const ForwardMode<scalar_t> m{values.mutable_data_ptr<acc_t>(), norms.mutable_data_ptr<acc_t>(),
                                  params_of<acc_t>(scalars)};
    reduce_rows(m, Rows<scalar_t>{grads.const_data_ptr<scalar_t>()}, grads);
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
    const BackwardOp<scalar_t> op{gout.const_data_ptr<acc_t>(), norms.const_data_ptr<acc_t>(),
                                  params_of<acc_t>(scalars)};
    launch_elementwise(op, grads.const_data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr),
                       dgrads.mutable_data_ptr<scalar_t>(), total, shape.N, stream);
  });
}

void penalty_double_backward(const at::TensorBase& v, const at::TensorBase& gout, const at::TensorBase& grads,
                             const PenaltyScalars& scalars, const at::TensorBase& d_gout,
                             const at::TensorBase& d_grads) {
  const RowShape shape(grads);
  const int64_t total = shape.total();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  GPK_DISPATCH(grads.scalar_type(), "gpkernels::penalty_double_backward (cuda)", [&] {
    using acc_t = acc_t_of<scalar_t>;
    at::TensorBase ws = make_workspace<acc_t>(grads, 5 * shape.B);  // [a | b | scale_a | gamma | sigma]
    acc_t* terms = ws.mutable_data_ptr<acc_t>();
    const DoubleBackwardMode<scalar_t> m{gout.const_data_ptr<acc_t>(), d_gout.mutable_data_ptr<acc_t>(), terms,
                                         shape.B, params_of<acc_t>(scalars)};
    reduce_rows(m, Rows<scalar_t>{grads.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>()}, grads);
    if (total > 0) {
      launch_elementwise(DoubleBackwardApplyOp<scalar_t>{terms, shape.B}, v.const_data_ptr<scalar_t>(),
                         grads.const_data_ptr<scalar_t>(), d_grads.mutable_data_ptr<scalar_t>(), total, shape.N,
                         stream);
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
