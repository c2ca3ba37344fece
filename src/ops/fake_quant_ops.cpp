// torch.ops.mopt fake-quant family: schemas, CPU and Meta implementations, and the C++ entry
// points that call through the dispatcher.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "core/tensor_utils.h"
#include "fake_quant/fake_quant_math.h"
#include "mopt/quant/fake_quant.h"
#include "ops/fake_quant_common.h"

namespace mopt {
namespace ops {

namespace {

void check_floating_input(const at::Tensor& x) { core::kernel_dtype(x, "input"); }

at::Tensor amax_as_float(const at::Tensor& x, const at::Tensor& amax) {
  MOPT_CHECK_VALUE(amax.device() == x.device(), "amax is on ", amax.device(),
                   " but the input is on ", x.device());
  MOPT_CHECK_TYPE(at::isFloatingType(amax.scalar_type()), "amax must be a floating tensor, got ",
                  amax.scalar_type());
  return amax.to(at::kFloat).contiguous();
}

}  // namespace

[[noreturn]] void throw_negative_unsigned() {
  MOPT_CHECK_VALUE(false,
                   "unsigned quantization met negative input values; use a signed quantizer "
                   "(unsigned=False) for this tensor");
  __builtin_unreachable();
}

FakeQuantCall prepare_fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int64_t num_bits,
                                     bool is_unsigned, bool narrow_range, bool full_range,
                                     const at::Tensor& zero_point) {
  FakeQuantCall c;
  auto& p = c.params;
  p.dtype = core::kernel_dtype(x, "input");
  MOPT_CHECK_VALUE(num_bits >= 2 && num_bits <= 16, "integer num_bits must be in [2, 16], got ",
                   num_bits);
  MOPT_CHECK_VALUE(!full_range || (!is_unsigned && !narrow_range),
                   "full_range applies to signed integer formats without narrow_range (got "
                   "unsigned=", is_unsigned, ", narrow_range=", narrow_range, ")");
  c.x = x.contiguous();
  c.amax = amax_as_float(x, amax);
  c.y = at::empty_like(c.x);
  p.layout = core::reduce_layout(c.x, core::amax_keep_mask(x, amax));
  p.x = c.x.const_data_ptr();
  p.y = c.y.mutable_data_ptr();
  p.amax = c.amax.const_data_ptr<float>();
  p.format = kernels::Format::kInt;
  p.num_bits = static_cast<int>(num_bits);
  p.is_unsigned = is_unsigned;
  p.narrow_range = narrow_range;
  p.full_range = full_range;
  if (zero_point.defined()) {
    MOPT_CHECK_VALUE(zero_point.sizes() == amax.sizes(), "zero_point of shape ",
                     zero_point.sizes(), " must have amax's shape ", amax.sizes());
    c.zero_point = amax_as_float(x, zero_point);
    p.zero_point = c.zero_point.const_data_ptr<float>();
  }
  return c;
}

AsymRangeCall prepare_int_asym_range(const at::Tensor& lo, const at::Tensor& hi,
                                     int64_t num_bits) {
  MOPT_CHECK_VALUE(num_bits >= 2 && num_bits <= 16, "integer num_bits must be in [2, 16], got ",
                   num_bits);
  MOPT_CHECK_VALUE(lo.sizes() == hi.sizes() && lo.device() == hi.device(), "int_asym_range: lo ",
                   lo.sizes(), " on ", lo.device(), " and hi ", hi.sizes(), " on ", hi.device(),
                   " must have one shape and device");
  AsymRangeCall c;
  c.lo = amax_as_float(lo, lo);
  c.hi = amax_as_float(lo, hi);
  c.amax = at::empty_like(c.lo);
  c.zero_point = at::empty_like(c.lo);
  c.params.lo = c.lo.const_data_ptr<float>();
  c.params.hi = c.hi.const_data_ptr<float>();
  c.params.amax = c.amax.mutable_data_ptr<float>();
  c.params.zero_point = c.zero_point.mutable_data_ptr<float>();
  c.params.n = c.lo.numel();
  c.params.num_bits = static_cast<int>(num_bits);
  return c;
}

FakeQuantCall prepare_fake_quant_fp(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                                    int64_t exponent_bits, int64_t mantissa_bits) {
  FakeQuantCall c;
  auto& p = c.params;
  p.dtype = core::kernel_dtype(x, "input");
  MOPT_CHECK_VALUE(exponent_bits >= 1 && exponent_bits <= 5 && mantissa_bits >= 1 &&
                       mantissa_bits <= 10,
                   "minifloat format E", exponent_bits, "M", mantissa_bits,
                   " is not supported; exponent bits must be in [1, 5] and mantissa bits in [1, 10]");
  c.x = x.contiguous();
  c.y = at::empty_like(c.x);
  std::vector<bool> keep(x.dim(), false);
  if (amax.has_value() && amax->defined()) {
    keep = core::amax_keep_mask(x, *amax);
    c.amax = amax_as_float(x, *amax);
    p.amax = c.amax.const_data_ptr<float>();
  }
  p.layout = core::reduce_layout(c.x, keep);
  p.x = c.x.const_data_ptr();
  p.y = c.y.mutable_data_ptr();
  p.format = kernels::Format::kMinifloat;
  p.exponent_bits = static_cast<int>(exponent_bits);
  p.mantissa_bits = static_cast<int>(mantissa_bits);
  return c;
}

std::vector<int64_t> amax_shape(const at::Tensor& x, at::IntArrayRef keep_axes) {
  const auto axes = core::normalize_axes(keep_axes, x.dim(), "amax keep axis");
  const auto keep = core::keep_mask_from_axes(axes, x.dim());
  std::vector<int64_t> shape(x.dim(), 1);
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (keep[d]) shape[d] = x.size(d);
  }
  return shape;
}

AmaxCall prepare_amax(const at::Tensor& x, at::IntArrayRef keep_axes) {
  AmaxCall c;
  c.params.dtype = core::kernel_dtype(x, "input");
  const auto axes = core::normalize_axes(keep_axes, x.dim(), "amax keep axis");
  c.x = x.contiguous();
  c.out = at::empty(amax_shape(x, keep_axes), x.options().dtype(at::kFloat));
  c.params.layout = core::reduce_layout(c.x, core::keep_mask_from_axes(axes, x.dim()));
  c.params.x = c.x.const_data_ptr();
  c.params.out = c.out.mutable_data_ptr<float>();
  return c;
}

namespace {

at::Tensor fake_quant_int_cpu(const at::Tensor& x, const at::Tensor& amax, int64_t num_bits,
                              bool is_unsigned, bool narrow_range, bool /*pass_through_bwd*/,
                              bool full_range) {
  FakeQuantCall c =
      prepare_fake_quant_int(x, amax, num_bits, is_unsigned, narrow_range, full_range);
  int32_t negative = 0;
  c.params.negative_found = &negative;
  core::call_kernel([&] { kernels::fake_quant::fake_quant_cpu(c.params); });
  if (negative) throw_negative_unsigned();
  return c.y;
}

at::Tensor fake_quant_int_asym_cpu(const at::Tensor& x, const at::Tensor& amax,
                                   const at::Tensor& zero_point, int64_t num_bits,
                                   bool /*pass_through_bwd*/) {
  FakeQuantCall c = prepare_fake_quant_int(x, amax, num_bits, false, false, true, zero_point);
  core::call_kernel([&] { kernels::fake_quant::fake_quant_cpu(c.params); });
  return c.y;
}

std::tuple<at::Tensor, at::Tensor> int_asym_range_cpu(const at::Tensor& lo, const at::Tensor& hi,
                                                      int64_t num_bits) {
  AsymRangeCall c = prepare_int_asym_range(lo, hi, num_bits);
  core::call_kernel([&] { kernels::fake_quant::int_asym_range_cpu(c.params); });
  return {c.amax, c.zero_point};
}

at::Tensor fake_quant_fp_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                             int64_t exponent_bits, int64_t mantissa_bits, bool) {
  FakeQuantCall c = prepare_fake_quant_fp(x, amax, exponent_bits, mantissa_bits);
  core::call_kernel([&] { kernels::fake_quant::fake_quant_cpu(c.params); });
  return c.y;
}

at::Tensor amax_cpu(const at::Tensor& x, at::IntArrayRef keep_axes) {
  AmaxCall c = prepare_amax(x, keep_axes);
  core::call_kernel([&] { kernels::reduce::amax_cpu(c.params); });
  return c.out;
}

// Meta kernels work on symbolic shapes (torch.compile with dynamic shapes): they use sym_sizes
// and leave size-dependent argument checks to the real kernels.
void check_amax_rank(const at::Tensor& x, const at::Tensor& amax) {
  MOPT_CHECK_VALUE(amax.dim() <= x.dim(), "amax has ", amax.dim(), " dims but the input has ",
                   x.dim());
}

at::Tensor fake_quant_int_meta(const at::Tensor& x, const at::Tensor& amax, int64_t num_bits,
                               bool, bool, bool, bool) {
  check_floating_input(x);
  check_amax_rank(x, amax);
  return at::empty_symint(x.sym_sizes(), x.options());
}

at::Tensor fake_quant_int_asym_meta(const at::Tensor& x, const at::Tensor& amax,
                                    const at::Tensor& zero_point, int64_t, bool) {
  check_floating_input(x);
  check_amax_rank(x, amax);
  check_amax_rank(x, zero_point);
  return at::empty_symint(x.sym_sizes(), x.options());
}

std::tuple<at::Tensor, at::Tensor> int_asym_range_meta(const at::Tensor& lo, const at::Tensor&,
                                                       int64_t) {
  const auto opts = lo.options().dtype(at::kFloat);
  return {at::empty_symint(lo.sym_sizes(), opts), at::empty_symint(lo.sym_sizes(), opts)};
}

at::Tensor fake_quant_fp_meta(const at::Tensor& x, const c10::optional<at::Tensor>& amax, int64_t,
                              int64_t, bool) {
  check_floating_input(x);
  if (amax.has_value() && amax->defined()) check_amax_rank(x, *amax);
  return at::empty_symint(x.sym_sizes(), x.options());
}

at::Tensor amax_meta(const at::Tensor& x, at::IntArrayRef keep_axes) {
  check_floating_input(x);
  const auto axes = core::normalize_axes(keep_axes, x.dim(), "amax keep axis");
  const auto keep = core::keep_mask_from_axes(axes, x.dim());
  std::vector<c10::SymInt> shape(x.dim(), c10::SymInt(1));
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (keep[d]) shape[d] = x.sym_size(d);
  }
  return at::empty_symint(shape, x.options().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mopt, m) {
  m.def(
      "fake_quant_int(Tensor x, Tensor amax, int num_bits=8, bool is_unsigned=False, "
      "bool narrow_range=False, bool pass_through_bwd=False, bool full_range=False) -> Tensor");
  m.def(
      "fake_quant_int_asym(Tensor x, Tensor amax, Tensor zero_point, int num_bits=8, "
      "bool pass_through_bwd=False) -> Tensor");
  m.def("int_asym_range(Tensor lo, Tensor hi, int num_bits) -> (Tensor, Tensor)");
  m.def(
      "fake_quant_fp(Tensor x, Tensor? amax, int exponent_bits=4, int mantissa_bits=3, "
      "bool pass_through_bwd=False) -> Tensor");
  m.def("amax(Tensor x, int[] keep_axes=[]) -> Tensor");
}

TORCH_LIBRARY_IMPL(mopt, CPU, m) {
  m.impl("fake_quant_int", &fake_quant_int_cpu);
  m.impl("fake_quant_int_asym", &fake_quant_int_asym_cpu);
  m.impl("int_asym_range", &int_asym_range_cpu);
  m.impl("fake_quant_fp", &fake_quant_fp_cpu);
  m.impl("amax", &amax_cpu);
}

TORCH_LIBRARY_IMPL(mopt, Meta, m) {
  m.impl("fake_quant_int", &fake_quant_int_meta);
  m.impl("fake_quant_int_asym", &fake_quant_int_asym_meta);
  m.impl("int_asym_range", &int_asym_range_meta);
  m.impl("fake_quant_fp", &fake_quant_fp_meta);
  m.impl("amax", &amax_meta);
}

}  // namespace ops

at::Tensor fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int64_t num_bits,
                          bool is_unsigned, bool narrow_range, bool pass_through_bwd,
                          bool full_range) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::fake_quant_int", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, bool, bool,
                                         bool, bool)>();
  return op.call(x, amax, num_bits, is_unsigned, narrow_range, pass_through_bwd, full_range);
}

at::Tensor fake_quant_int_asym(const at::Tensor& x, const at::Tensor& amax,
                               const at::Tensor& zero_point, int64_t num_bits,
                               bool pass_through_bwd) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::fake_quant_int_asym", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t, bool)>();
  return op.call(x, amax, zero_point, num_bits, pass_through_bwd);
}

std::tuple<at::Tensor, at::Tensor> int_asym_range(const at::Tensor& lo, const at::Tensor& hi,
                                                  int64_t num_bits) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::int_asym_range", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                                 const at::Tensor&, int64_t)>();
  return op.call(lo, hi, num_bits);
}

at::Tensor fake_quant_fp(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                         int64_t exponent_bits, int64_t mantissa_bits, bool pass_through_bwd) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::fake_quant_fp", "")
                       .typed<at::Tensor(const at::Tensor&, const c10::optional<at::Tensor>&,
                                         int64_t, int64_t, bool)>();
  return op.call(x, amax, exponent_bits, mantissa_bits, pass_through_bwd);
}

at::Tensor compute_amax(const at::Tensor& x, at::IntArrayRef keep_axes) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::amax", "")
                       .typed<at::Tensor(const at::Tensor&, at::IntArrayRef)>();
  return op.call(x, keep_axes);
}

std::tuple<at::Tensor, at::Tensor> compute_min_max(const at::Tensor& x,
                                                   at::IntArrayRef keep_axes) {
  const auto axes = core::normalize_axes(keep_axes, x.dim(), "amax keep axis");
  const auto keep = core::keep_mask_from_axes(axes, x.dim());
  std::vector<int64_t> reduce;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (!keep[d]) reduce.push_back(d);
  }
  const at::Tensor v = x.detach();
  if (reduce.empty()) return {v.to(at::kFloat), v.to(at::kFloat)};  // amin({}) would reduce all
  return {at::amin(v, reduce, true).to(at::kFloat), at::amax(v, reduce, true).to(at::kFloat)};
}

double minifloat_max_value(int64_t exponent_bits, int64_t mantissa_bits) {
  return kernels::fake_quant::minifloat_max(static_cast<int>(exponent_bits),
                                            static_cast<int>(mantissa_bits));
}

}  // namespace mopt
