// torch.ops.mopt gguf family (llama.cpp's Q8_0 / Q4_0 / Q5_0 / Q4_K): schemas, CPU, Meta and
// Autograd implementations, and the C++ entry points that call through the dispatcher.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "core/tensor_utils.h"
#include "mopt/core/error.h"
#include "mopt/quant/gguf.h"
#include "ops/gguf_common.h"

namespace mopt {
namespace ops {

using kernels::gguf::GgufType;

namespace {

GgufType parse_type(const std::string& type, bool allow_q5_0) {
  GgufType t = GgufType::kF32;
  core::call_kernel([&] { t = kernels::gguf::gguf_type_from_name(type.c_str()); });
  MOPT_CHECK_VALUE(allow_q5_0 || t != GgufType::kQ5_0, "GGUF type 'q5_0' is only llama.cpp's "
                   "fallback for Q4_K rows; request q8_0, q4_0 or q4_k");
  return t;
}

int64_t row_len_of(const at::Tensor& x) { return x.dim() == 0 ? 1 : x.size(-1); }

}  // namespace

GgufCall prepare_gguf(const at::Tensor& x, GgufType type, bool pack) {
  GgufCall c;
  auto& p = c.params;
  p.dtype = core::kernel_dtype(x, "input");
  p.type = type;
  c.x = x.contiguous();
  p.row_len = row_len_of(x);
  p.rows = p.row_len == 0 ? 0 : x.numel() / p.row_len;
  const int64_t block = kernels::gguf::block_elements(type);
  MOPT_CHECK_VALUE(p.row_len % block == 0, "GGUF ", kernels::gguf::gguf_type_name(type),
                   " stores rows that are a multiple of ", block, " elements; the input of shape ",
                   core::shape_str(x.sizes()), " has rows of ", p.row_len);
  if (pack) {
    MOPT_CHECK_VALUE(x.dim() == 2, "gguf_pack takes a 2-D weight [rows, row_len], got shape ",
                     core::shape_str(x.sizes()));
    c.packed = at::empty({p.rows, kernels::gguf::gguf_packed_bytes(type, 1, p.row_len)},
                         x.options().dtype(at::kByte));
    p.packed = c.packed.mutable_data_ptr<uint8_t>();
  } else {
    c.y = at::empty_like(c.x);
    p.y = c.y.mutable_data_ptr();
  }
  p.x = c.x.const_data_ptr();
  return c;
}

namespace {

at::Tensor fake_quant_gguf_cpu(const at::Tensor& x, c10::string_view type) {
  const GgufType row = kernels::gguf::gguf_row_type(parse_type(std::string(type), false),
                                                    row_len_of(x));
  if (row == GgufType::kF32) return x.clone();
  GgufCall c = prepare_gguf(x, row, false);
  core::call_kernel([&] { kernels::gguf::gguf_quant_cpu(c.params); });
  return c.y;
}

at::Tensor gguf_pack_cpu(const at::Tensor& x, c10::string_view type) {
  GgufCall c = prepare_gguf(x, parse_type(std::string(type), true), true);
  core::call_kernel([&] { kernels::gguf::gguf_quant_cpu(c.params); });
  return c.packed;
}

at::Tensor fake_quant_gguf_meta(const at::Tensor& x, c10::string_view type) {
  core::kernel_dtype(x, "input");
  parse_type(std::string(type), false);
  return at::empty_symint(x.sym_sizes(), x.options());
}

at::Tensor gguf_pack_meta(const at::Tensor& x, c10::string_view type) {
  const GgufType t = parse_type(std::string(type), true);
  MOPT_CHECK_VALUE(x.dim() == 2, "gguf_pack takes a 2-D weight [rows, row_len], got ", x.dim(),
                   " dims");
  const c10::SymInt per_row = x.sym_size(1) / kernels::gguf::block_elements(t) *
                              kernels::gguf::block_bytes(t);
  return at::empty_symint({x.sym_size(0), per_row}, x.options().dtype(at::kByte));
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Straight through: every element of a block sets or shares its block's scale, so no element is
// clipped (as dynamic MX / NF4 blocks).
class FakeQuantGgufFunction : public torch::autograd::Function<FakeQuantGgufFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& x, c10::string_view type) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_gguf(x, std::string(type));
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

at::Tensor fake_quant_gguf_autograd(const at::Tensor& x, c10::string_view type) {
  return FakeQuantGgufFunction::apply(x, type);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mopt, m) {
  m.def("fake_quant_gguf(Tensor x, str type) -> Tensor");
  m.def("gguf_pack(Tensor x, str type) -> Tensor");
}

TORCH_LIBRARY_IMPL(mopt, CPU, m) {
  m.impl("fake_quant_gguf", &fake_quant_gguf_cpu);
  m.impl("gguf_pack", &gguf_pack_cpu);
}

TORCH_LIBRARY_IMPL(mopt, Meta, m) {
  m.impl("fake_quant_gguf", &fake_quant_gguf_meta);
  m.impl("gguf_pack", &gguf_pack_meta);
}

TORCH_LIBRARY_IMPL(mopt, Autograd, m) { m.impl("fake_quant_gguf", &fake_quant_gguf_autograd); }

}  // namespace ops

std::string gguf_row_type(const std::string& type, int64_t row_len) {
  return kernels::gguf::gguf_type_name(
      kernels::gguf::gguf_row_type(ops::parse_type(type, false), row_len));
}

at::Tensor fake_quant_gguf(const at::Tensor& x, const std::string& type) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::fake_quant_gguf", "")
                       .typed<at::Tensor(const at::Tensor&, c10::string_view)>();
  return op.call(x, type);
}

at::Tensor gguf_pack(const at::Tensor& x, const std::string& type) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mopt::gguf_pack", "")
                       .typed<at::Tensor(const at::Tensor&, c10::string_view)>();
  return op.call(x, type);
}

}  // namespace mopt
