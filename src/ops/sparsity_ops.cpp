// torch.ops.mopt N:M sparsity family (nm_mask, compress_2to4, decompress_2to4): schemas, CPU,
// Meta and Autograd implementations, and the C++ entry points that call through the dispatcher.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/any.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bitwise_and.h>
#include <ATen/ops/bitwise_right_shift.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/stack.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>

#include "core/tensor_utils.h"
#include "mopt/sparsity/nm.h"
#include "ops/sparsity_common.h"

namespace mopt {
namespace ops {

namespace ks = kernels::sparsity;

namespace {

// "layer 'fc1': " for messages, or nothing for an unnamed call.
std::string layer_prefix(c10::string_view name) {
  return name.empty() ? std::string() : "layer '" + std::string(name) + "': ";
}

// The checks that need no data (shared with Meta). cols is unknown (nullopt) under symbolic
// shapes.
void check_nm_args(const at::Tensor& weight, const c10::optional<at::Tensor>& factor, int64_t n,
                   int64_t m, c10::string_view name) {
  const std::string layer = layer_prefix(name);
  MOPT_CHECK_VALUE(weight.dim() == 2, layer,
                   "N:M sparsity needs a 2-D weight [out, in], got shape ", weight.sym_sizes());
  MOPT_CHECK_TYPE(at::isFloatingType(weight.scalar_type()), layer,
                  "N:M sparsity needs a floating weight, got ", weight.scalar_type());
  MOPT_CHECK_VALUE(m >= 1 && m <= ks::kMaxGroup && n >= 1 && n <= m, layer,
                   "N:M sparsity needs 1 <= N <= M <= ", ks::kMaxGroup, ", got ", n, ":", m);
  if (const auto cols = weight.sym_size(1).maybe_as_int()) {
    MOPT_CHECK_VALUE(*cols % m == 0, layer, n, ":", m, " sparsity needs the input dimension (",
                     *cols, " cols) to be a multiple of ", m);
  }
  if (factor.has_value() && factor->defined()) {
    const at::Tensor& f = *factor;
    MOPT_CHECK_VALUE(f.device() == weight.device(), layer, "column_factor is on ", f.device(),
                     " but the weight is on ", weight.device());
    MOPT_CHECK_TYPE(at::isFloatingType(f.scalar_type()), layer,
                    "column_factor must be a floating tensor, got ", f.scalar_type());
    const bool fits = f.dim() == 1 && f.sym_size(0) == weight.sym_size(1);
    MOPT_CHECK_VALUE(fits, layer, "column_factor has shape ", f.sym_sizes(), " but the weight ",
                     weight.sym_sizes(), " needs one factor per column, shape [",
                     weight.sym_size(1), "]");
  }
}

void check_2to4_cols(int64_t cols) {
  MOPT_CHECK_VALUE(cols % ks::kColsPerMetaWord == 0, "compress_2to4 needs the number of columns (",
                   cols, ") to be a multiple of ", ks::kColsPerMetaWord,
                   ": one int16 metadata word describes 4 groups of 4 columns");
}

}  // namespace

[[noreturn]] void throw_nonfinite_weight(c10::string_view name) {
  MOPT_CHECK_STATE(false, layer_prefix(name),
                   "the weight holds NaN or Inf values, which N:M sparsity cannot rank");
  __builtin_unreachable();
}

NmMaskCall prepare_nm_mask(const at::Tensor& weight, const c10::optional<at::Tensor>& factor,
                           int64_t n, int64_t m, c10::string_view name) {
  check_nm_args(weight, factor, n, m, name);
  NmMaskCall c;
  auto& p = c.params;
  // Scores are fp32 by contract; a float64 weight is ranked on its fp32 rounding.
  c.weight = (weight.scalar_type() == at::kDouble ? weight.to(at::kFloat) : weight).contiguous();
  p.dtype = core::kernel_dtype(c.weight, "N:M sparsity weight");
  if (factor.has_value() && factor->defined()) {
    c.factor = factor->to(at::kFloat).contiguous();
    const std::string layer = layer_prefix(name);
    MOPT_CHECK_STATE(at::isfinite(c.factor).all().item<bool>(), layer,
                     "column_factor holds NaN or Inf values");
    MOPT_CHECK_STATE(!(c.factor < 0).any().item<bool>(), layer,
                     "column_factor must be non-negative (scores are |w| * factor)");
    p.column_factor = c.factor.const_data_ptr<float>();
  }
  c.mask = at::empty(weight.sizes(), weight.options().dtype(at::kBool));
  p.w = c.weight.const_data_ptr();
  p.rows = weight.size(0);
  p.cols = weight.size(1);
  p.n = static_cast<int>(n);
  p.m = static_cast<int>(m);
  // torch.bool is one byte holding 0 or 1: the kernel's mask bytes.
  p.mask = reinterpret_cast<uint8_t*>(c.mask.mutable_data_ptr<bool>());
  return c;
}

Compress2to4Call prepare_compress_2to4(const at::Tensor& weight) {
  MOPT_CHECK_VALUE(weight.dim() == 2, "compress_2to4 needs a 2-D tensor, got shape ",
                   weight.sizes());
  Compress2to4Call c;
  auto& p = c.params;
  p.dtype = core::kernel_dtype(weight, "compress_2to4 input");
  const int64_t rows = weight.size(0), cols = weight.size(1);
  check_2to4_cols(cols);
  c.dense = weight.contiguous();
  c.values = at::empty({rows, cols / 2}, weight.options());
  c.meta = at::empty({rows, cols / ks::kColsPerMetaWord}, weight.options().dtype(at::kShort));
  p.dense = c.dense.const_data_ptr();
  p.rows = rows;
  p.cols = cols;
  p.values = c.values.mutable_data_ptr();
  p.meta = c.meta.mutable_data_ptr<int16_t>();
  return c;
}

[[noreturn]] void throw_not_2to4(int64_t count) {
  MOPT_CHECK_VALUE(false,
                   "2:4 compression needs at most 2 nonzeros in every group of 4 columns, but ",
                   count, " group(s) have more");
  __builtin_unreachable();
}

Decompress2to4Call prepare_decompress_2to4(const at::Tensor& values, const at::Tensor& meta) {
  MOPT_CHECK_VALUE(values.dim() == 2 && meta.dim() == 2,
                   "decompress_2to4 needs 2-D values and meta, got shapes ", values.sizes(),
                   " and ", meta.sizes());
  MOPT_CHECK_TYPE(meta.scalar_type() == at::kShort, "decompress_2to4 meta must be int16, got ",
                  meta.scalar_type());
  MOPT_CHECK_VALUE(meta.device() == values.device(), "decompress_2to4 meta is on ", meta.device(),
                   " but the values are on ", values.device());
  Decompress2to4Call c;
  auto& p = c.params;
  p.dtype = core::kernel_dtype(values, "decompress_2to4 values");
  const int64_t rows = values.size(0), cols = 2 * values.size(1);
  const int64_t words = cols / ks::kColsPerMetaWord;
  MOPT_CHECK_VALUE(
      cols % ks::kColsPerMetaWord == 0 && meta.size(0) == rows && meta.size(1) == words,
      "decompress_2to4: values of shape ", values.sizes(), " and meta of shape ", meta.sizes(),
      " do not fit; values [rows, cols / 2] need meta [rows, cols / 16]",
      " with cols a multiple of 16");
  c.values = values.contiguous();
  c.meta = meta.contiguous();
  c.dense = at::empty({rows, cols}, values.options());
  p.values = c.values.const_data_ptr();
  p.meta = c.meta.const_data_ptr<int16_t>();
  p.rows = rows;
  p.cols = cols;
  p.dense = c.dense.mutable_data_ptr();
  return c;
}

[[noreturn]] void throw_bad_2to4_meta(int64_t count) {
  MOPT_CHECK_VALUE(false, "decompress_2to4: ", count,
                   " metadata code(s) do not name two increasing positions; the metadata was not "
                   "written by compress_2to4");
  __builtin_unreachable();
}

namespace {

// ---------------------------------------------------------------------------------------------
// CPU

at::Tensor nm_mask_cpu(const at::Tensor& weight, const c10::optional<at::Tensor>& column_factor,
                       int64_t n, int64_t m, c10::string_view name) {
  NmMaskCall c = prepare_nm_mask(weight, column_factor, n, m, name);
  int32_t nonfinite = 0;
  c.params.nonfinite_found = &nonfinite;
  core::call_kernel([&] { ks::nm_mask_cpu(c.params); });
  if (nonfinite != 0) throw_nonfinite_weight(name);
  return c.mask;
}

std::tuple<at::Tensor, at::Tensor> compress_2to4_cpu(const at::Tensor& weight) {
  Compress2to4Call c = prepare_compress_2to4(weight);
  core::call_kernel([&] { ks::compress_2to4_cpu(c.params); });
  return {c.values, c.meta};
}

at::Tensor decompress_2to4_cpu(const at::Tensor& values, const at::Tensor& meta) {
  Decompress2to4Call c = prepare_decompress_2to4(values, meta);
  core::call_kernel([&] { ks::decompress_2to4_cpu(c.params); });
  return c.dense;
}

// ---------------------------------------------------------------------------------------------
// Meta: shapes and the argument checks that need no data.

at::Tensor nm_mask_meta(const at::Tensor& weight, const c10::optional<at::Tensor>& column_factor,
                        int64_t n, int64_t m, c10::string_view name) {
  check_nm_args(weight, column_factor, n, m, name);
  return at::empty_symint(weight.sym_sizes(), weight.options().dtype(at::kBool));
}

std::tuple<at::Tensor, at::Tensor> compress_2to4_meta(const at::Tensor& weight) {
  MOPT_CHECK_VALUE(weight.dim() == 2, "compress_2to4 needs a 2-D tensor, got shape ",
                   weight.sym_sizes());
  core::kernel_dtype(weight, "compress_2to4 input");
  const c10::SymInt rows = weight.sym_size(0), cols = weight.sym_size(1);
  if (const auto c = cols.maybe_as_int()) check_2to4_cols(*c);
  return {
      at::empty_symint({rows, cols / 2}, weight.options()),
      at::empty_symint({rows, cols / ks::kColsPerMetaWord}, weight.options().dtype(at::kShort))};
}

at::Tensor decompress_2to4_meta(const at::Tensor& values, const at::Tensor& meta) {
  MOPT_CHECK_VALUE(values.dim() == 2 && meta.dim() == 2,
                   "decompress_2to4 needs 2-D values and meta, got shapes ", values.sym_sizes(),
                   " and ", meta.sym_sizes());
  MOPT_CHECK_TYPE(meta.scalar_type() == at::kShort, "decompress_2to4 meta must be int16, got ",
                  meta.scalar_type());
  core::kernel_dtype(values, "decompress_2to4 values");
  return at::empty_symint({values.sym_size(0), values.sym_size(1) * 2}, values.options());
}

// ---------------------------------------------------------------------------------------------
// Autograd. The mask is a selection (no gradient). compress_2to4 and decompress_2to4 move
// elements without arithmetic, so each one's gradient is the other movement: the values'
// gradient scatters back to the positions the metadata names, the dense gradient is gathered
// from them.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor nm_mask_autograd(const at::Tensor& weight,
                            const c10::optional<at::Tensor>& column_factor, int64_t n, int64_t m,
                            c10::string_view name) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return sparsity::nm_mask(weight, column_factor, n, m, std::string(name));
}

// dense [rows, cols] at the two positions per group of 4 that meta [rows, cols / 16] names:
// [rows, cols / 2] in the values layout.
at::Tensor gather_2to4(const at::Tensor& dense, const at::Tensor& meta) {
  const at::Tensor shifts = at::arange(0, 16, 4, meta.options().dtype(at::kInt));
  const at::Tensor codes = at::bitwise_and(
      at::bitwise_right_shift(meta.to(at::kInt).unsqueeze(-1), shifts), 0xf);  // [rows, words, 4]
  const at::Tensor first = at::bitwise_and(codes, 3);
  const at::Tensor second = at::bitwise_and(at::bitwise_right_shift(codes, 2), 3);
  const at::Tensor index = at::stack({first, second}, -1).to(at::kLong);
  const c10::SymInt rows = dense.sym_size(0), cols = dense.sym_size(1);
  return dense.reshape_symint({rows, cols / 4, 4})
      .gather(-1, index.reshape_symint({rows, cols / 4, 2}))
      .reshape_symint({rows, cols / 2});
}

class Compress2to4Function : public torch::autograd::Function<Compress2to4Function> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [values, meta] = sparsity::compress_2to4(weight);
    ctx->mark_non_differentiable({meta});
    ctx->save_for_backward({meta});
    return {values, meta};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    const at::Tensor meta = ctx->get_saved_variables()[0];
    return {sparsity::decompress_2to4(grads[0], meta)};
  }
};

class Decompress2to4Function : public torch::autograd::Function<Decompress2to4Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& values,
                            const at::Tensor& meta) {
    ctx->save_for_backward({meta});
    at::AutoDispatchBelowADInplaceOrView guard;
    return sparsity::decompress_2to4(values, meta);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    const at::Tensor meta = ctx->get_saved_variables()[0];
    return {gather_2to4(grads[0], meta), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> compress_2to4_autograd(const at::Tensor& weight) {
  const variable_list out = Compress2to4Function::apply(weight);
  return {out[0], out[1]};
}

at::Tensor decompress_2to4_autograd(const at::Tensor& values, const at::Tensor& meta) {
  return Decompress2to4Function::apply(values, meta);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mopt, m) {
  m.def("nm_mask(Tensor weight, Tensor? column_factor, int n, int m, str name=\"\") -> Tensor");
  m.def("compress_2to4(Tensor weight) -> (Tensor, Tensor)");
  m.def("decompress_2to4(Tensor values, Tensor meta) -> Tensor");
}

TORCH_LIBRARY_IMPL(mopt, CPU, m) {
  m.impl("nm_mask", &nm_mask_cpu);
  m.impl("compress_2to4", &compress_2to4_cpu);
  m.impl("decompress_2to4", &decompress_2to4_cpu);
}

TORCH_LIBRARY_IMPL(mopt, Meta, m) {
  m.impl("nm_mask", &nm_mask_meta);
  m.impl("compress_2to4", &compress_2to4_meta);
  m.impl("decompress_2to4", &decompress_2to4_meta);
}

TORCH_LIBRARY_IMPL(mopt, Autograd, m) {
  m.impl("nm_mask", &nm_mask_autograd);
  m.impl("compress_2to4", &compress_2to4_autograd);
  m.impl("decompress_2to4", &decompress_2to4_autograd);
}

}  // namespace ops

namespace sparsity {

at::Tensor nm_mask(const at::Tensor& weight, const c10::optional<at::Tensor>& column_factor,
                   int64_t n, int64_t m, const std::string& name) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::nm_mask", "")
                       .typed<at::Tensor(const at::Tensor&, const c10::optional<at::Tensor>&,
                                         int64_t, int64_t, c10::string_view)>();
  return op.call(weight, column_factor, n, m, name);
}

std::tuple<at::Tensor, at::Tensor> compress_2to4(const at::Tensor& weight) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::compress_2to4", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op.call(weight);
}

at::Tensor decompress_2to4(const at::Tensor& values, const at::Tensor& meta) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::decompress_2to4", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(values, meta);
}

}  // namespace sparsity
}  // namespace mopt
