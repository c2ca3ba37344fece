// torch.ops.mopt block-format family (NVFP4, MX, NF4): schemas, CPU and Meta implementations,
// and the C++ entry points that call through the dispatcher.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "core/tensor_utils.h"
#include "mopt/quant/block_quant.h"
#include "mopt/quant/fake_quant.h"
#include "ops/block_quant_common.h"

namespace mopt {
namespace ops {

using kernels::Format;

namespace {

std::vector<int64_t> block_amax_shape(const at::Tensor& x, int64_t block_size) {
  if (x.dim() == 0) return {1};
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = kernels::ceil_div(shape.back(), block_size);
  return shape;
}

at::Tensor float_operand(const at::Tensor& x, const at::Tensor& a, const char* what) {
  MOPT_CHECK_VALUE(a.device() == x.device(), what, " is on ", a.device(), " but the input is on ",
                   x.device());
  MOPT_CHECK_TYPE(at::isFloatingType(a.scalar_type()), what, " must be a floating tensor, got ",
                  a.scalar_type());
  return a.to(at::kFloat).contiguous();
}

void check_block_size(int64_t block_size) {
  MOPT_CHECK_VALUE(block_size >= 1, "block_size must be positive, got ", block_size);
}

}  // namespace

BlockQuantCall prepare_block_quant(const at::Tensor& x, Format format, int64_t block_size,
                                   const c10::optional<at::Tensor>& global_amax,
                                   const c10::optional<at::Tensor>& block_amax) {
  BlockQuantCall c;
  auto& p = c.params;
  p.dtype = core::kernel_dtype(x, "input");
  check_block_size(block_size);
  c.x = x.contiguous();
  c.y = at::empty_like(c.x);
  p.row_len = x.dim() == 0 ? 1 : x.size(-1);
  p.rows = p.row_len == 0 ? 0 : x.numel() / p.row_len;
  p.block_size = block_size;
  p.format = format;
  if (block_amax.has_value() && block_amax->defined()) {
    const auto want = block_amax_shape(x, block_size);
    MOPT_CHECK_VALUE(block_amax->sizes() == at::IntArrayRef(want), "block_amax of shape ",
                     core::shape_str(block_amax->sizes()), " does not fit the input of shape ",
                     core::shape_str(x.sizes()), " in blocks of ", block_size,
                     " along the last dim; expected shape ", core::shape_str(want));
    c.block_amax = float_operand(x, *block_amax, "block_amax");
    p.block_amax = c.block_amax.const_data_ptr<float>();
  }
  if (format == Format::kNVFP4) {
    if (global_amax.has_value() && global_amax->defined()) {
      MOPT_CHECK_VALUE(global_amax->numel() == 1,
                       "global_amax must hold one value (the tensor amax), got shape ",
                       core::shape_str(global_amax->sizes()));
      c.global_amax = float_operand(x, *global_amax, "global_amax");
    } else {
      // The tensor scale of an uncalibrated quantizer comes from this input (or its static
      // block amaxes), computed on the input's device without a host round trip.
      c.global_amax = compute_amax(c.block_amax.defined() ? c.block_amax : c.x);
    }
    p.global_amax = c.global_amax.const_data_ptr<float>();
  }
  p.x = c.x.const_data_ptr();
  p.y = c.y.mutable_data_ptr();
  return c;
}

namespace {

at::Tensor fake_quant_nvfp4_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& global_amax,
                                int64_t block_size, const c10::optional<at::Tensor>& block_amax,
                                bool /*pass_through_bwd*/) {
  BlockQuantCall c =
      prepare_block_quant(x, Format::kNVFP4, block_size, global_amax, block_amax);
  core::call_kernel([&] { kernels::block_quant::block_quant_cpu(c.params); });
  return c.y;
}

at::Tensor fake_quant_mx_cpu(const at::Tensor& x, int64_t exponent_bits, int64_t mantissa_bits,
                             int64_t block_size, const c10::optional<at::Tensor>& block_amax,
                             bool /*pass_through_bwd*/) {
  MOPT_CHECK_VALUE(
      exponent_bits >= 0 && exponent_bits <= 5 && mantissa_bits >= 1 && mantissa_bits <= 10,
      "MX element format E", exponent_bits, "M", mantissa_bits, " is not supported");
  BlockQuantCall c = prepare_block_quant(x, Format::kMX, block_size, c10::nullopt, block_amax);
  c.params.exponent_bits = static_cast<int>(exponent_bits);
  c.params.mantissa_bits = static_cast<int>(mantissa_bits);
  core::call_kernel([&] { kernels::block_quant::block_quant_cpu(c.params); });
  return c.y;
}

at::Tensor fake_quant_nf4_cpu(const at::Tensor& x, int64_t block_size, int64_t scale_block_size,
                              const c10::optional<at::Tensor>& block_amax,
                              bool /*pass_through_bwd*/) {
  BlockQuantCall c =
      prepare_block_quant(x, Format::kNF4, block_size, c10::nullopt, block_amax);
  c.params.scale_block_size = scale_block_size;
  core::call_kernel([&] { kernels::block_quant::block_quant_cpu(c.params); });
  return c.y;
}

// Meta kernels work on symbolic shapes: the output is shaped like x; size-dependent checks are
// left to the real kernels.
void check_meta(const at::Tensor& x, int64_t block_size,
                const c10::optional<at::Tensor>& block_amax) {
  core::kernel_dtype(x, "input");
  check_block_size(block_size);
  if (block_amax.has_value() && block_amax->defined()) {
    MOPT_CHECK_VALUE(block_amax->dim() == std::max<int64_t>(x.dim(), 1), "block_amax has ",
                     block_amax->dim(), " dims but the input has ", x.dim());
  }
}

at::Tensor fake_quant_nvfp4_meta(const at::Tensor& x, const c10::optional<at::Tensor>& global_amax,
                                 int64_t block_size, const c10::optional<at::Tensor>& block_amax,
                                 bool) {
  check_meta(x, block_size, block_amax);
  return at::empty_symint(x.sym_sizes(), x.options());
}

at::Tensor fake_quant_mx_meta(const at::Tensor& x, int64_t, int64_t, int64_t block_size,
                              const c10::optional<at::Tensor>& block_amax, bool) {
  check_meta(x, block_size, block_amax);
  return at::empty_symint(x.sym_sizes(), x.options());
}

at::Tensor fake_quant_nf4_meta(const at::Tensor& x, int64_t block_size, int64_t,
                               const c10::optional<at::Tensor>& block_amax, bool) {
  check_meta(x, block_size, block_amax);
  return at::empty_symint(x.sym_sizes(), x.options());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mopt, m) {
  m.def(
      "fake_quant_nvfp4(Tensor x, Tensor? global_amax=None, int block_size=16, "
      "Tensor? block_amax=None, bool pass_through_bwd=False) -> Tensor");
  m.def(
      "fake_quant_mx(Tensor x, int exponent_bits, int mantissa_bits, int block_size=32, "
      "Tensor? block_amax=None, bool pass_through_bwd=False) -> Tensor");
  m.def(
      "fake_quant_nf4(Tensor x, int block_size=64, int scale_block_size=0, "
      "Tensor? block_amax=None, bool pass_through_bwd=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(mopt, CPU, m) {
  m.impl("fake_quant_nvfp4", &fake_quant_nvfp4_cpu);
  m.impl("fake_quant_mx", &fake_quant_mx_cpu);
  m.impl("fake_quant_nf4", &fake_quant_nf4_cpu);
}

TORCH_LIBRARY_IMPL(mopt, Meta, m) {
  m.impl("fake_quant_nvfp4", &fake_quant_nvfp4_meta);
  m.impl("fake_quant_mx", &fake_quant_mx_meta);
  m.impl("fake_quant_nf4", &fake_quant_nf4_meta);
}

}  // namespace ops

at::Tensor fake_quant_nvfp4(const at::Tensor& x, const c10::optional<at::Tensor>& global_amax,
                            int64_t block_size, const c10::optional<at::Tensor>& block_amax,
                            bool pass_through_bwd) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::fake_quant_nvfp4", "")
                       .typed<at::Tensor(const at::Tensor&, const c10::optional<at::Tensor>&,
                                         int64_t, const c10::optional<at::Tensor>&, bool)>();
  return op.call(x, global_amax, block_size, block_amax, pass_through_bwd);
}

at::Tensor fake_quant_mx(const at::Tensor& x, int64_t exponent_bits, int64_t mantissa_bits,
                         int64_t block_size, const c10::optional<at::Tensor>& block_amax,
                         bool pass_through_bwd) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::fake_quant_mx", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t,
                                         const c10::optional<at::Tensor>&, bool)>();
  return op.call(x, exponent_bits, mantissa_bits, block_size, block_amax, pass_through_bwd);
}

at::Tensor fake_quant_nf4(const at::Tensor& x, int64_t block_size, int64_t scale_block_size,
                          const c10::optional<at::Tensor>& block_amax, bool pass_through_bwd) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::fake_quant_nf4", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, int64_t,
                                         const c10::optional<at::Tensor>&, bool)>();
  return op.call(x, block_size, scale_block_size, block_amax, pass_through_bwd);
}

}  // namespace mopt
