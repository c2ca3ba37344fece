// Autograd for the fake_quant family: clipped straight-through estimator (gradient passes where
// |x| <= amax, zero elsewhere), or pass-through; no gradient to amax. amax is not differentiable.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/ge.h>
#include <ATen/ops/logical_and.h>
#include <ATen/ops/le.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

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

class FakeQuantIntFunction : public torch::autograd::Function<FakeQuantIntFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& amax,
                            int64_t num_bits, bool is_unsigned, bool narrow_range,
                            bool pass_through_bwd, bool full_range) {
    ctx->saved_data["pass_through"] = pass_through_bwd;
    if (!pass_through_bwd) ctx->save_for_backward({x, amax.detach()});
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_int(x, amax, num_bits, is_unsigned, narrow_range, pass_through_bwd,
                          full_range);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor gx = grads[0];
    if (!ctx->saved_data["pass_through"].toBool()) {
      const auto saved = ctx->get_saved_variables();
      gx = clipped_ste(grads[0], saved[0], saved[1]);
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
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
    if (!pass_through_bwd) {
      // Without amax the unscaled cast saturates at the format maximum.
      at::Tensor bound = amax.has_value() && amax->defined()
                             ? amax->detach()
                             : at::scalar_tensor(minifloat_max_value(exponent_bits, mantissa_bits),
                                                 x.options().dtype(at::kFloat));
      ctx->save_for_backward({x, bound});
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_fp(x, amax, exponent_bits, mantissa_bits, pass_through_bwd);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor gx = grads[0];
    if (!ctx->saved_data["pass_through"].toBool()) {
      const auto saved = ctx->get_saved_variables();
      gx = clipped_ste(grads[0], saved[0], saved[1]);
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
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
