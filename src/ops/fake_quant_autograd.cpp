// Autograd for the fake_quant family: clipped straight-through estimator (gradient passes where
// |x| <= amax, zero elsewhere), or pass-through. A symmetric amax that requires grad gets the
// LSQ gradient (Esser et al. 2020, learned step size): with y = s * Q(x / s), s = amax / B and
// the rounding passed straight through, dy/damax = (y - x) / amax where x / s lies inside the
// code range and y / amax (the clamp bound over B) outside it, summed to amax's shape.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <ATen/ExpandUtils.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/ge.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/logical_and.h>
#include <ATen/ops/le.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <utility>

#include "fake_quant/fake_quant_math.h"
#include "mopt/quant/fake_quant.h"

namespace mopt::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// grad where |x| <= bound (bound broadcasts like amax), zero elsewhere.
at::Tensor clipped_ste(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bound) {
  return at::where(at::le(at::abs(x), bound.to(x.scalar_type())), grad, at::zeros_like(grad));
}

// LSQ gradient to amax of y = fake_quant(x, amax) (fp32 math): grad * (y - x [lo <= x <= hi])
// / amax, where [lo, hi] (broadcast like amax) is the input range that maps inside the codes,
// zero where amax <= 2^-24 (the output is 0 there whatever amax is), summed to amax's shape.
at::Tensor lsq_amax_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                         const at::Tensor& amax, const at::Tensor& lo, const at::Tensor& hi) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor a = amax.to(at::kFloat);
  const at::Tensor inside = at::logical_and(at::ge(xf, lo), at::le(xf, hi));
  const at::Tensor residual = y.to(at::kFloat) - at::where(inside, xf, at::zeros_like(xf));
  const at::Tensor live = at::gt(a, kernels::fake_quant::kMinAmax);
  const at::Tensor per_element =
      at::where(live, grad.to(at::kFloat) * residual / a, at::zeros_like(residual));
  return at::sum_to(per_element, amax.sizes()).to(amax.scalar_type());
}

// The backward of the symmetric int and minifloat functions, whose forward saved {x, amax} for
// the clipped STE, or {x, amax, y, lo, hi} when amax learns: the gradients to x and to amax
// (undefined unless amax learns).
std::pair<at::Tensor, at::Tensor> input_and_amax_grads(AutogradContext* ctx,
                                                       const at::Tensor& grad) {
  at::Tensor gx = grad, gamax;
  const auto saved = ctx->get_saved_variables();
  if (!ctx->saved_data["pass_through"].toBool()) gx = clipped_ste(grad, saved[0], saved[1]);
  if (ctx->saved_data["learn_amax"].toBool()) {
    gamax = lsq_amax_grad(grad, saved[0], saved[2], saved[1], saved[3], saved[4]);
  }
  return {gx, gamax};
}

class FakeQuantIntFunction : public torch::autograd::Function<FakeQuantIntFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& amax,
                            int64_t num_bits, bool is_unsigned, bool narrow_range,
                            bool pass_through_bwd, bool full_range) {
    ctx->saved_data["pass_through"] = pass_through_bwd;
    const bool learn = amax.requires_grad();
    ctx->saved_data["learn_amax"] = learn;
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = fake_quant_int(x, amax, num_bits, is_unsigned, narrow_range, pass_through_bwd,
                         full_range);
    }
    if (learn) {
      namespace fq = kernels::fake_quant;
      const int bits = static_cast<int>(num_bits);
      const at::Tensor step = amax.detach().to(at::kFloat) /
                              fq::int_scale_bound(bits, is_unsigned, full_range);
      ctx->save_for_backward({x, amax.detach(), y.detach(),
                              step * fq::int_minbound(bits, is_unsigned, narrow_range),
                              step * fq::int_maxbound(bits, is_unsigned)});
    } else if (!pass_through_bwd) {
      ctx->save_for_backward({x, amax.detach()});
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto [gx, gamax] = input_and_amax_grads(ctx, grads[0]);
    return {gx, gamax, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Asymmetric: the gradient passes where x maps inside the code range, x * s + zp in
// [-2^(b-1), 2^(b-1)-1], s = (2^(b-1) - 1/2) / amax; no gradient to amax or the zero point.
class FakeQuantIntAsymFunction : public torch::autograd::Function<FakeQuantIntAsymFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& amax,
                            const at::Tensor& zero_point, int64_t num_bits,
                            bool pass_through_bwd) {
    ctx->saved_data["pass_through"] = pass_through_bwd;
    if (!pass_through_bwd) {
      namespace fq = kernels::fake_quant;
      const int bits = static_cast<int>(num_bits);
      const double qmin = fq::int_minbound(bits, false, false);
      const double qmax = fq::int_maxbound(bits, false);
      const at::Tensor step = amax.detach().to(at::kFloat) / fq::int_scale_bound(bits, false, true);
      const at::Tensor zp = zero_point.detach().to(at::kFloat);
      ctx->save_for_backward({x, (qmin - zp) * step, (qmax - zp) * step});
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_int_asym(x, amax, zero_point, num_bits, pass_through_bwd);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor gx = grads[0];
    if (!ctx->saved_data["pass_through"].toBool()) {
      const auto saved = ctx->get_saved_variables();
      const at::Tensor& x = saved[0];
      const at::Tensor inside = at::logical_and(at::ge(x, saved[1].to(x.scalar_type())),
                                                at::le(x, saved[2].to(x.scalar_type())));
      gx = at::where(inside, gx, at::zeros_like(gx));
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class FakeQuantFpFunction : public torch::autograd::Function<FakeQuantFpFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const c10::optional<at::Tensor>& amax, int64_t exponent_bits,
                            int64_t mantissa_bits, bool pass_through_bwd) {
    ctx->saved_data["pass_through"] = pass_through_bwd;
    const bool has_amax = amax.has_value() && amax->defined();
    const bool learn = has_amax && amax->requires_grad();
    ctx->saved_data["learn_amax"] = learn;
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = fake_quant_fp(x, amax, exponent_bits, mantissa_bits, pass_through_bwd);
    }
    // Without amax the unscaled cast saturates at the format maximum.
    const at::Tensor bound = has_amax
                                 ? amax->detach()
                                 : at::scalar_tensor(minifloat_max_value(exponent_bits,
                                                                         mantissa_bits),
                                                     x.options().dtype(at::kFloat));
    if (learn) {
      // saturating at +-amax: the codes cover exactly [-amax, amax]
      const at::Tensor a = bound.to(at::kFloat);
      ctx->save_for_backward({x, bound, y.detach(), -a, a});
    } else if (!pass_through_bwd) {
      ctx->save_for_backward({x, bound});
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto [gx, gamax] = input_and_amax_grads(ctx, grads[0]);
    return {gx, gamax, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fake_quant_int_autograd(const at::Tensor& x, const at::Tensor& amax, int64_t num_bits,
                                   bool is_unsigned, bool narrow_range, bool pass_through_bwd,
                                   bool full_range) {
  return FakeQuantIntFunction::apply(x, amax, num_bits, is_unsigned, narrow_range,
                                     pass_through_bwd, full_range);
}

at::Tensor fake_quant_int_asym_autograd(const at::Tensor& x, const at::Tensor& amax,
                                        const at::Tensor& zero_point, int64_t num_bits,
                                        bool pass_through_bwd) {
  return FakeQuantIntAsymFunction::apply(x, amax, zero_point, num_bits, pass_through_bwd);
}

std::tuple<at::Tensor, at::Tensor> int_asym_range_autograd(const at::Tensor& lo,
                                                           const at::Tensor& hi,
                                                           int64_t num_bits) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return int_asym_range(lo.detach(), hi.detach(), num_bits);  // statistics: no gradient
}

at::Tensor fake_quant_fp_autograd(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                                  int64_t exponent_bits, int64_t mantissa_bits,
                                  bool pass_through_bwd) {
  return FakeQuantFpFunction::apply(x, amax, exponent_bits, mantissa_bits, pass_through_bwd);
}

at::Tensor amax_autograd(const at::Tensor& x, at::IntArrayRef keep_axes) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return compute_amax(x, keep_axes);  // a statistic: never part of the gradient
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt, Autograd, m) {
  m.impl("fake_quant_int", &fake_quant_int_autograd);
  m.impl("fake_quant_int_asym", &fake_quant_int_asym_autograd);
  m.impl("int_asym_range", &int_asym_range_autograd);
  m.impl("fake_quant_fp", &fake_quant_fp_autograd);
  m.impl("amax", &amax_autograd);
}

}  // namespace mopt::ops
