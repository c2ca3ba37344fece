// Autograd for the block_quant family: a clipped straight-through estimator. The gradient passes
// where |x| <= the amax the scales were derived from (the static block amax, else NVFP4's tensor
// amax) and is zero elsewhere; dynamic MX and NF4 scales cover every element of their block, so
// their gradient passes everywhere, as with pass_through_bwd. No gradient to any amax: their
// block scales are rounded to FP8 or powers of two, so an amax that requires grad is refused
// rather than left silently without one (learned scales, LSQ, cover fake_quant_int/_fp).
#include <ATen/ops/abs.h>
#include <ATen/ops/le.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "mopt/core/error.h"
#include "mopt/quant/block_quant.h"

namespace mopt::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// block_amax [..., nb] broadcast to the elements of x [..., L] (blocks of block_size).
at::Tensor per_element(const at::Tensor& block_amax, const at::Tensor& x, int64_t block_size) {
  if (x.dim() == 0) return block_amax.reshape({});
  std::vector<c10::SymInt> expanded(block_amax.sym_sizes().begin(), block_amax.sym_sizes().end());
  expanded.push_back(c10::SymInt(block_size));
  std::vector<c10::SymInt> flat(block_amax.sym_sizes().begin(), block_amax.sym_sizes().end());
  flat.back() = flat.back() * block_size;
  return block_amax.unsqueeze(-1).expand_symint(expanded).reshape_symint(flat).narrow_symint(
      -1, 0, x.sym_size(-1));
}

// Saves what backward needs: nothing for a pass-through gradient, else x and the clipping bound.
void save_bound(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& bound,
                bool pass_through_bwd) {
  const bool clip = !pass_through_bwd && bound.defined();
  ctx->saved_data["clip"] = clip;
  if (clip) ctx->save_for_backward({x, bound});
}

at::Tensor clipped_grad(AutogradContext* ctx, const at::Tensor& grad) {
  if (!ctx->saved_data["clip"].toBool()) return grad;
  const auto saved = ctx->get_saved_variables();
  return at::where(at::le(at::abs(saved[0]), saved[1].to(saved[0].scalar_type())), grad,
                   at::zeros_like(grad));
}

void refuse_learned_amax(const c10::optional<at::Tensor>& amax, const char* op, const char* what) {
  MOPT_CHECK_IMPLEMENTED(!(at::GradMode::is_enabled() && amax.has_value() && amax->defined() &&
                           amax->requires_grad()),
                         op, ": ", what, " requires grad, but this format has no gradient to its "
                         "scales (block scales quantized to FP8 or powers of two); learned scales "
                         "(LSQ) cover the integer and minifloat formats (fake_quant_int/_fp)");
}

at::Tensor defined_or_empty(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->detach() : at::Tensor();
}

class FakeQuantNvfp4Function : public torch::autograd::Function<FakeQuantNvfp4Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const c10::optional<at::Tensor>& global_amax, int64_t block_size,
                            const c10::optional<at::Tensor>& block_amax, bool pass_through_bwd) {
    const at::Tensor block = defined_or_empty(block_amax);
    const at::Tensor global = defined_or_empty(global_amax);
    const at::Tensor bound = block.defined() ? per_element(block, x, block_size)
                             : global.defined() && global.numel() == 1 ? global.reshape({})
                                                                       : at::Tensor();
    save_bound(ctx, x, bound, pass_through_bwd);
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_nvfp4(x, global_amax, block_size, block_amax, pass_through_bwd);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {clipped_grad(ctx, grads[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class FakeQuantMxFunction : public torch::autograd::Function<FakeQuantMxFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t exponent_bits,
                            int64_t mantissa_bits, int64_t block_size,
                            const c10::optional<at::Tensor>& block_amax, bool pass_through_bwd) {
    const at::Tensor block = defined_or_empty(block_amax);
    save_bound(ctx, x, block.defined() ? per_element(block, x, block_size) : at::Tensor(),
               pass_through_bwd);
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_mx(x, exponent_bits, mantissa_bits, block_size, block_amax, pass_through_bwd);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {clipped_grad(ctx, grads[0]),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

class FakeQuantNf4Function : public torch::autograd::Function<FakeQuantNf4Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t block_size,
                            int64_t scale_block_size, const c10::optional<at::Tensor>& block_amax,
                            bool pass_through_bwd) {
    const at::Tensor block = defined_or_empty(block_amax);
    save_bound(ctx, x, block.defined() ? per_element(block, x, block_size) : at::Tensor(),
               pass_through_bwd);
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_nf4(x, block_size, scale_block_size, block_amax, pass_through_bwd);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {clipped_grad(ctx, grads[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fake_quant_nvfp4_autograd(const at::Tensor& x,
                                     const c10::optional<at::Tensor>& global_amax,
                                     int64_t block_size,
                                     const c10::optional<at::Tensor>& block_amax,
                                     bool pass_through_bwd) {
  // here, not in forward, which autograd runs with gradients off
  refuse_learned_amax(global_amax, "fake_quant_nvfp4", "global_amax");
  refuse_learned_amax(block_amax, "fake_quant_nvfp4", "block_amax");
  return FakeQuantNvfp4Function::apply(x, global_amax, block_size, block_amax, pass_through_bwd);
}

at::Tensor fake_quant_mx_autograd(const at::Tensor& x, int64_t exponent_bits, int64_t mantissa_bits,
                                  int64_t block_size, const c10::optional<at::Tensor>& block_amax,
                                  bool pass_through_bwd) {
  refuse_learned_amax(block_amax, "fake_quant_mx", "block_amax");
  return FakeQuantMxFunction::apply(x, exponent_bits, mantissa_bits, block_size, block_amax,
                                    pass_through_bwd);
}

at::Tensor fake_quant_nf4_autograd(const at::Tensor& x, int64_t block_size,
                                   int64_t scale_block_size,
                                   const c10::optional<at::Tensor>& block_amax,
                                   bool pass_through_bwd) {
  refuse_learned_amax(block_amax, "fake_quant_nf4", "block_amax");
  return FakeQuantNf4Function::apply(x, block_size, scale_block_size, block_amax, pass_through_bwd);
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt, Autograd, m) {
  m.impl("fake_quant_nvfp4", &fake_quant_nvfp4_autograd);
  m.impl("fake_quant_mx", &fake_quant_mx_autograd);
  m.impl("fake_quant_nf4", &fake_quant_nf4_autograd);
}

}  // namespace mopt::ops
