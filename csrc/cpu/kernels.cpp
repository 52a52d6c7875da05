// CPU kernels of gpkernels. Memory is walked in tiles of (sample, segment): a long sample is split into
// segments so that even B = 1 parallelises, and every reduction keeps kLanes independent accumulators so
// the compiler vectorises it without reassociating floating-point sums. The per-sample arithmetic comes
// from common/penalty_math.h, shared with the CUDA kernels.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/TensorBase.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../common/penalty_math.h"
#include "../gpkernels.h"

namespace gpkernels {
namespace cpu {
namespace {

constexpr int64_t kSegment = int64_t(1) << 15;  // elements one task touches at most (fits in L2)
constexpr int kLanes = 16;                      // independent partial sums per reduction

// The (sample, segment) tiles of a [B, N] row tensor.
struct Tiles {
  int64_t B, N, nseg, seglen;
  explicit Tiles(const at::TensorBase& rows)
      : B(rows.size(0)), N(B > 0 ? rows.numel() / B : 0) {
    nseg = std::max<int64_t>(1, (N + kSegment - 1) / kSegment);
    seglen = N < kSegment ? N : kSegment;
  }
  int64_t count() const { return B * nseg; }
  // Tiles per parallel chunk, so that a chunk moves at least one segment's worth of elements.
  int64_t grain() const { return std::max<int64_t>(1, kSegment / std::max<int64_t>(1, seglen)); }

  // f(row, first element offset from the row start, element count, tile index)
  template <typename F>
  void for_each(F f) const {
    at::parallel_for(0, count(), grain(), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t row = t / nseg;
        const int64_t lo = (t % nseg) * kSegment;
        f(row, lo, std::min(N, lo + kSegment) - lo, t);
      }
    });
  }
};

template <typename acc_t>
inline acc_t fold_lanes(acc_t* acc) {
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0];
}

// Sums (f(j).first, f(j).second) over j in [0, n).
template <typename acc_t, typename F>
inline std::pair<acc_t, acc_t> lane_sum2(int64_t n, F f) {
  acc_t a[kLanes] = {}, b[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const auto v = f(j + l);
      a[l] += v.first;
      b[l] += v.second;
    }
  }
  acc_t ta = 0, tb = 0;
  for (; j < n; ++j) {
    const auto v = f(j);
    ta += v.first;
    tb += v.second;
  }
  return {fold_lanes(a) + ta, fold_lanes(b) + tb};
}

template <typename acc_t, typename F>
inline acc_t lane_sum(int64_t n, F f) {
  return lane_sum2<acc_t>(n, [&](int64_t j) { return std::pair<acc_t, acc_t>(f(j), acc_t(0)); }).first;
}

// Per-sample totals of the per-tile partial sums, added in tile order (deterministic).
template <typename acc_t>
inline acc_t row_total(const std::vector<acc_t>& partial, const Tiles& tiles, int64_t row) {
  acc_t total = 0;
  for (int64_t s = 0; s < tiles.nseg; ++s) total += partial[row * tiles.nseg + s];
  return total;
}

template <typename acc_t>
math::PenaltyParams<acc_t> params_of(const PenaltyScalars& p) {
  return {static_cast<acc_t>(p.target), static_cast<acc_t>(p.weight), static_cast<acc_t>(p.inv_scale),
          static_cast<acc_t>(p.exponent), p.one_sided};
}

// Rows whose plain sum of squares needs the rescue pass (penalty_math.h, "Range"): their indices and kinds.
template <typename acc_t>
struct Rescues {
  std::vector<int64_t> rows;
  std::vector<int> kind;  // per row, 0 for most
  explicit Rescues(int64_t B) : kind(B, 0) {}
  void note(int64_t row, acc_t sumsq) {
    kind[row] = math::rescue_kind(sumsq);
    if (kind[row] != 0) rows.push_back(row);
  }
  // f(row, factor) for every rescued row, in parallel (rare: usually none).
  template <typename F>
  void for_each(F f) const {
    if (rows.empty()) return;
    at::parallel_for(0, static_cast<int64_t>(rows.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(rows[i], math::rescue_factor<acc_t>(kind[rows[i]]));
    });
  }
};

// out = a v + b g over one tile: d_grads of the double backward. A function of its own (not inlined), so that
// the register allocation of the rest of penalty_double_backward cannot spill into this loop.
template <typename scalar_t, typename acc_t>
__attribute__((noinline)) void apply_axpby(acc_t a, acc_t b, const scalar_t* v, const scalar_t* g, scalar_t* out,
                                           int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = static_cast<scalar_t>(a * static_cast<acc_t>(v[j]) + b * static_cast<acc_t>(g[j]));
  }
}

// The same where the row's double backward terms are projected (the smallest norms; see DoubleBackwardTerms).
template <typename scalar_t, typename acc_t>
__attribute__((noinline)) void apply_projected(const math::DoubleBackwardTerms<acc_t>& t, const scalar_t* v,
                                               const scalar_t* g, scalar_t* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = static_cast<scalar_t>(math::double_backward_element(t.a.coef, t.a.scale, t.b, t.gamma, t.sigma,
                                                                 static_cast<acc_t>(v[j]), static_cast<acc_t>(g[j])));
  }
}

#define GPK_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

}  // namespace

void interp(const at::TensorBase& real, const at::TensorBase& fake, const at::TensorBase& alpha,
            const at::TensorBase& out) {
  const Tiles tiles(real);
  GPK_DISPATCH(real.scalar_type(), "gpkernels::interp (cpu)", [&] {
    using acc_t = math::accum_t<scalar_t>;
    const scalar_t* r = real.const_data_ptr<scalar_t>();
    const scalar_t* f = fake.const_data_ptr<scalar_t>();
    const scalar_t* a = alpha.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    tiles.for_each([&](int64_t row, int64_t lo, int64_t n, int64_t) {
      const acc_t ai = static_cast<acc_t>(a[row]);
      const int64_t base = row * tiles.N + lo;
      for (int64_t j = base; j < base + n; ++j) {
        o[j] = static_cast<scalar_t>(
            math::lerp<acc_t>(ai, static_cast<acc_t>(r[j]), static_cast<acc_t>(f[j])));
      }
    });
  });
}

void interp_backward(const at::TensorBase& grad, const at::TensorBase& real, const at::TensorBase& fake,
                     const at::TensorBase& alpha, const at::TensorBase& g_real,
                     const at::TensorBase& g_fake, const at::TensorBase& g_alpha) {
  const Tiles tiles(grad);
  GPK_DISPATCH(grad.scalar_type(), "gpkernels::interp_backward (cpu)", [&] {
    using acc_t = math::accum_t<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* r = real.const_data_ptr<scalar_t>();
    const scalar_t* f = fake.const_data_ptr<scalar_t>();
    const scalar_t* a = alpha.const_data_ptr<scalar_t>();
    scalar_t* gr = g_real.mutable_data_ptr<scalar_t>();
    scalar_t* gf = g_fake.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> partial(tiles.count());
    tiles.for_each([&](int64_t row, int64_t lo, int64_t n, int64_t t) {
      const acc_t ai = static_cast<acc_t>(a[row]);
      const acc_t bi = acc_t(1) - ai;
      const int64_t base = row * tiles.N + lo;
      partial[t] = lane_sum<acc_t>(n, [&](int64_t j) {
        const acc_t gv = static_cast<acc_t>(g[base + j]);
        gr[base + j] = static_cast<scalar_t>(ai * gv);
        gf[base + j] = static_cast<scalar_t>(bi * gv);
        return (static_cast<acc_t>(r[base + j]) - static_cast<acc_t>(f[base + j])) * gv;
      });
    });
    scalar_t* ga = g_alpha.mutable_data_ptr<scalar_t>();
    for (int64_t row = 0; row < tiles.B; ++row) {
      ga[row] = static_cast<scalar_t>(row_total(partial, tiles, row));
    }
  });
}

void penalty_forward(const at::TensorBase& grads, const PenaltyScalars& scalars,
                     const at::TensorBase& values, const at::TensorBase& norms) {
  const Tiles tiles(grads);
  GPK_DISPATCH(grads.scalar_type(), "gpkernels::penalty_forward (cpu)", [&] {
    using acc_t = math::accum_t<scalar_t>;
    const auto p = params_of<acc_t>(scalars);
    const scalar_t* g = grads.const_data_ptr<scalar_t>();
    std::vector<acc_t> partial(tiles.count());
    tiles.for_each([&](int64_t row, int64_t lo, int64_t n, int64_t t) {
      const scalar_t* x = g + row * tiles.N + lo;
      partial[t] = lane_sum<acc_t>(n, [&](int64_t j) {
        const acc_t v = static_cast<acc_t>(x[j]);
        return v * v;
      });
    });
    std::vector<acc_t> sumsq(tiles.B), scaled(tiles.B);
    Rescues<acc_t> rescues(tiles.B);
    for (int64_t row = 0; row < tiles.B; ++row) {
      sumsq[row] = row_total(partial, tiles, row);
      rescues.note(row, sumsq[row]);
    }
    rescues.for_each([&](int64_t row, acc_t f) {
      const scalar_t* x = g + row * tiles.N;
      scaled[row] = lane_sum<acc_t>(tiles.N, [&](int64_t j) {
        const acc_t v = static_cast<acc_t>(x[j]) * f;
        return v * v;
      });
    });
    acc_t* val = values.mutable_data_ptr<acc_t>();
    acc_t* nrm = norms.mutable_data_ptr<acc_t>();
    for (int64_t row = 0; row < tiles.B; ++row) {
      const auto rn = math::row_norm(sumsq[row], rescues.kind[row], scaled[row], p);
      nrm[row] = rn.n;
      val[row] = math::row_value(rn, p);
    }
  });
}

void penalty_backward(const at::TensorBase& gout, const at::TensorBase& grads, const at::TensorBase& norms,
                      const PenaltyScalars& scalars, const at::TensorBase& dgrads) {
  const Tiles tiles(grads);
  GPK_DISPATCH(grads.scalar_type(), "gpkernels::penalty_backward (cpu)", [&] {
    using acc_t = math::accum_t<scalar_t>;
    const auto p = params_of<acc_t>(scalars);
    const scalar_t* g = grads.const_data_ptr<scalar_t>();
    const acc_t* go = gout.const_data_ptr<acc_t>();
    const acc_t* nrm = norms.const_data_ptr<acc_t>();
    scalar_t* dg = dgrads.mutable_data_ptr<scalar_t>();
    tiles.for_each([&](int64_t row, int64_t lo, int64_t n, int64_t) {
      // dL/dg_i = gout_i * c_i * g_i, as coef * (g_i * scale) (scale = 1 but at extreme norms)
      const auto m = math::grad_multiplier(math::row_norm_of(nrm[row]), go[row], p);
      const acc_t coef = m.coef, scale = m.scale;
      const int64_t base = row * tiles.N + lo;
      if (scale == acc_t(1)) {
        for (int64_t j = base; j < base + n; ++j) dg[j] = static_cast<scalar_t>(coef * static_cast<acc_t>(g[j]));
      } else {
        for (int64_t j = base; j < base + n; ++j) {
          dg[j] = static_cast<scalar_t>(coef * (static_cast<acc_t>(g[j]) * scale));
        }
      }
    });
  });
}

void penalty_double_backward(const at::TensorBase& v, const at::TensorBase& gout, const at::TensorBase& grads,
                             const PenaltyScalars& scalars, const at::TensorBase& d_gout,
                             const at::TensorBase& d_grads) {
  const Tiles tiles(grads);
  GPK_DISPATCH(grads.scalar_type(), "gpkernels::penalty_double_backward (cpu)", [&] {
    using acc_t = math::accum_t<scalar_t>;
    const auto p = params_of<acc_t>(scalars);
    const scalar_t* g = grads.const_data_ptr<scalar_t>();
    const scalar_t* vv = v.const_data_ptr<scalar_t>();
    const acc_t* go = gout.const_data_ptr<acc_t>();
    std::vector<acc_t> dot_part(tiles.count()), sq_part(tiles.count());
    tiles.for_each([&](int64_t row, int64_t lo, int64_t n, int64_t t) {
      const int64_t base = row * tiles.N + lo;
      const auto sums = lane_sum2<acc_t>(n, [&](int64_t j) {
        const acc_t gj = static_cast<acc_t>(g[base + j]);
        return std::pair<acc_t, acc_t>(gj * static_cast<acc_t>(vv[base + j]), gj * gj);
      });
      dot_part[t] = sums.first;
      sq_part[t] = sums.second;
    });
    std::vector<acc_t> dot(tiles.B), sumsq(tiles.B), scaled_dot(tiles.B), scaled_sq(tiles.B);
    Rescues<acc_t> rescues(tiles.B);
    for (int64_t row = 0; row < tiles.B; ++row) {
      dot[row] = row_total(dot_part, tiles, row);
      sumsq[row] = row_total(sq_part, tiles, row);
      rescues.note(row, sumsq[row]);
    }
    rescues.for_each([&](int64_t row, acc_t f) {
      const int64_t base = row * tiles.N;
      const auto sums = lane_sum2<acc_t>(tiles.N, [&](int64_t j) {
        const acc_t gj = static_cast<acc_t>(g[base + j]) * f;
        return std::pair<acc_t, acc_t>(gj * static_cast<acc_t>(vv[base + j]), gj * gj);
      });
      scaled_dot[row] = sums.first;
      scaled_sq[row] = sums.second;
    });
    // d_gout_i = c_i <g_i, v_i>;  d_grads_i = a_i v_i + b_i g_i with a_i = gout_i c_i, b_i = gout_i k_i <g_i, v_i>
    // (or, at the smallest norms, from its parts across and along g_i: DoubleBackwardTerms)
    acc_t* dgo = d_gout.mutable_data_ptr<acc_t>();
    std::vector<math::DoubleBackwardTerms<acc_t>> terms(tiles.B);
    std::vector<acc_t> a(tiles.B), b(tiles.B);
    for (int64_t row = 0; row < tiles.B; ++row) {
      const int kind = rescues.kind[row];
      terms[row] = math::double_backward_terms(math::row_norm(sumsq[row], kind, scaled_sq[row], p), go[row],
                                               math::RowDot<acc_t>{dot[row], kind, scaled_dot[row]}, p);
      dgo[row] = terms[row].d_gout;
      a[row] = terms[row].a.coef;
      b[row] = terms[row].b;
    }
    scalar_t* dg = d_grads.mutable_data_ptr<scalar_t>();
    tiles.for_each([&](int64_t row, int64_t lo, int64_t n, int64_t) {
      const int64_t base = row * tiles.N + lo;
      if (terms[row].sigma == acc_t(0)) {
        apply_axpby(a[row], b[row], vv + base, g + base, dg + base, n);
      } else {
        apply_projected(terms[row], vv + base, g + base, dg + base, n);
      }
    });
  });
}

}  // namespace cpu
}  // namespace gpkernels
