// Autograd of the compiled ops, registered for the Autograd dispatch key in C++ so that a call costs a
// C++ dispatch rather than a trip through Python (the Triton ops, defined in Python, get the same
// derivatives from gpkernels/ops/). The derivatives are written in common/penalty_math.h.
//
// Every backward calls the next op through the dispatcher, so it is recorded when the graph is built
// (create_graph=True): penalty_forward -> penalty_backward -> penalty_double_backward, whose own
// backward refuses clearly; interp -> interp_backward, whose backward is built from interp and
// elementwise ops and so differentiable to any order.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace gpkernels {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor2 = std::tuple<Tensor, Tensor>;

const auto& interp_op() {
  static const auto h = op<Tensor(const Tensor&, const Tensor&, const Tensor&)>("gpkernels::interp");
  return h;
}
const auto& interp_backward_op() {
  static const auto h =
      op<Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>("gpkernels::interp_backward");
  return h;
}
const auto& penalty_forward_op() {
  static const auto h = op<Tensor2(const Tensor&, double, bool, double, double, double)>("gpkernels::penalty_forward");
  return h;
}
const auto& penalty_backward_op() {
  static const auto h =
      op<Tensor(const Tensor&, const Tensor&, const Tensor&, double, bool, double, double, double)>(
          "gpkernels::penalty_backward");
  return h;
}
const auto& penalty_double_backward_op() {
  static const auto h =
      op<Tensor2(const Tensor&, const Tensor&, const Tensor&, double, bool, double, double, double)>(
          "gpkernels::penalty_double_backward");
  return h;
}

// The scalar arguments of the penalty ops, kept on the autograd context.
struct Scalars {
  double target, weight, inv_scale, exponent;
  bool one_sided;
  void save(AutogradContext* ctx) const {
    ctx->saved_data["target"] = target;
    ctx->saved_data["weight"] = weight;
    ctx->saved_data["inv_scale"] = inv_scale;
    ctx->saved_data["exponent"] = exponent;
    ctx->saved_data["one_sided"] = one_sided;
  }
  static Scalars load(AutogradContext* ctx) {
    return {ctx->saved_data["target"].toDouble(), ctx->saved_data["weight"].toDouble(),
            ctx->saved_data["inv_scale"].toDouble(), ctx->saved_data["exponent"].toDouble(),
            ctx->saved_data["one_sided"].toBool()};
  }
};

// alpha-like (B,) vector viewed as (B, 1, ..., 1) to broadcast over `like`.
Tensor per_sample_view(const Tensor& v, const Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = like.size(0);
  return v.reshape(shape);
}

struct Interp : public torch::autograd::Function<Interp> {
  static Tensor forward(AutogradContext* ctx, const Tensor& real, const Tensor& fake, const Tensor& alpha) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({real, fake, alpha});
    return interp_op().call(real, fake, alpha);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [g_real, g_fake, g_alpha] = interp_backward_op().call(grads[0], saved[0], saved[1], saved[2]);
    return {g_real, g_fake, g_alpha};
  }
};

// interp_backward is bilinear: for incoming (v_real, v_fake, v_alpha),
//   d grad  = v_real a + v_fake (1 - a) + v_alpha (real - fake)
//   d real  = v_alpha grad,  d fake = -v_alpha grad,  d alpha_i = <v_real_i - v_fake_i, grad_i>
struct InterpBackward : public torch::autograd::Function<InterpBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad, const Tensor& real, const Tensor& fake,
                               const Tensor& alpha) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad, real, fake, alpha});
    auto [g_real, g_fake, g_alpha] = interp_backward_op().call(grad, real, fake, alpha);
    return {g_real, g_fake, g_alpha};
  }
  static variable_list backward(AutogradContext* ctx, variable_list v) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &grad = saved[0], &real = saved[1], &fake = saved[2], &alpha = saved[3];
    // Gradients of unused outputs arrive as zeros (the Function's materialize_grads default).
    const Tensor &v_real = v[0], &v_fake = v[1], &v_alpha = v[2];
    const Tensor va = per_sample_view(v_alpha, grad);
    const Tensor d_grad = interp_op().call(v_real, v_fake, alpha) + va * (real - fake);
    const Tensor d_real = va * grad;
    const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const Tensor d_alpha =
        ((v_real - v_fake) * grad).reshape({grad.size(0), -1}).sum(1, false, acc).to(alpha.scalar_type());
    return {d_grad, d_real, -d_real, d_alpha};
  }
};

struct PenaltyForward : public torch::autograd::Function<PenaltyForward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grads, double target, bool one_sided,
                               double weight, double inv_scale, double exponent) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [values, norms] = penalty_forward_op().call(grads, target, one_sided, weight, inv_scale, exponent);
    ctx->save_for_backward({grads, norms});
    Scalars{target, weight, inv_scale, exponent, one_sided}.save(ctx);
    // The norms' dependence on grads is carried by penalty_backward's own derivative (the k term).
    ctx->mark_non_differentiable({norms});
    return {values, norms};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto s = Scalars::load(ctx);
    Tensor dgrads = penalty_backward_op().call(grads[0], saved[0], saved[1], s.target, s.one_sided, s.weight,
                                               s.inv_scale, s.exponent);
    return {dgrads, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct PenaltyBackward : public torch::autograd::Function<PenaltyBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& grad_values, const Tensor& grads, const Tensor& norms,
                        double target, bool one_sided, double weight, double inv_scale, double exponent) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad_values, grads});
    Scalars{target, weight, inv_scale, exponent, one_sided}.save(ctx);
    return penalty_backward_op().call(grad_values, grads, norms, target, one_sided, weight, inv_scale, exponent);
  }
  static variable_list backward(AutogradContext* ctx, variable_list v) {
    const auto saved = ctx->get_saved_variables();
    const auto s = Scalars::load(ctx);
    auto [d_gv, d_g] = penalty_double_backward_op().call(v[0], saved[0], saved[1], s.target, s.one_sided, s.weight,
                                                         s.inv_scale, s.exponent);
    // norms get no gradient: the k term of d_g is the full derivative through them.
    return {d_gv, d_g, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct PenaltyDoubleBackward : public torch::autograd::Function<PenaltyDoubleBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& v, const Tensor& grad_values, const Tensor& grads,
                               double target, bool one_sided, double weight, double inv_scale, double exponent) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [d_gv, d_g] =
        penalty_double_backward_op().call(v, grad_values, grads, target, one_sided, weight, inv_scale, exponent);
    return {d_gv, d_g};
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "gpkernels: the fused penalty is differentiable twice (double backward); a third "
                                "derivative is not implemented. Use backend='reference' for higher orders.");
    return {};
  }
};

Tensor interp_autograd(const Tensor& real, const Tensor& fake, const Tensor& alpha) {
  return Interp::apply(real, fake, alpha);
}

Tensor3 interp_backward_autograd(const Tensor& grad, const Tensor& real, const Tensor& fake, const Tensor& alpha) {
  auto out = InterpBackward::apply(grad, real, fake, alpha);
  return {out[0], out[1], out[2]};
}

Tensor2 penalty_forward_autograd(const Tensor& grads, double target, bool one_sided, double weight,
                                 double inv_scale, double exponent) {
  auto out = PenaltyForward::apply(grads, target, one_sided, weight, inv_scale, exponent);
  return {out[0], out[1]};
}

Tensor penalty_backward_autograd(const Tensor& grad_values, const Tensor& grads, const Tensor& norms, double target,
                                 bool one_sided, double weight, double inv_scale, double exponent) {
  return PenaltyBackward::apply(grad_values, grads, norms, target, one_sided, weight, inv_scale, exponent);
}

Tensor2 penalty_double_backward_autograd(const Tensor& v, const Tensor& grad_values, const Tensor& grads,
                                         double target, bool one_sided, double weight, double inv_scale,
                                         double exponent) {
  auto out = PenaltyDoubleBackward::apply(v, grad_values, grads, target, one_sided, weight, inv_scale, exponent);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(gpkernels, Autograd, m) {
  m.impl("interp", &interp_autograd);
  m.impl("interp_backward", &interp_backward_autograd);
  m.impl("penalty_forward", &penalty_forward_autograd);
  m.impl("penalty_backward", &penalty_backward_autograd);
  m.impl("penalty_double_backward", &penalty_double_backward_autograd);
}

}  // namespace gpkernels
