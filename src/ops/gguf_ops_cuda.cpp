// CUDA implementations of the gguf family (compiled only when torch has CUDA), on the caller's
// current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "core/tensor_utils.h"
#include "ops/gguf_common.h"

namespace mopt::ops {
namespace {

using kernels::gguf::GgufType;

GgufType type_of(c10::string_view type) {
  GgufType t = GgufType::kF32;
  core::call_kernel([&] { t = kernels::gguf::gguf_type_from_name(std::string(type).c_str()); });
  return t;
}

void run_cuda(GgufCall& c) {
  core::call_kernel(
      [&] { kernels::gguf::gguf_quant_cuda(c.params, at::cuda::getCurrentCUDAStream()); });
}

at::Tensor fake_quant_gguf_cuda(const at::Tensor& x, c10::string_view type) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GgufType t = type_of(type);
  MOPT_CHECK_VALUE(t != GgufType::kQ5_0, "GGUF type 'q5_0' is only llama.cpp's fallback for "
                   "Q4_K rows; request q8_0, q4_0 or q4_k");
  const GgufType row = kernels::gguf::gguf_row_type(t, x.dim() == 0 ? 1 : x.size(-1));
  if (row == GgufType::kF32) return x.clone();
  GgufCall c = prepare_gguf(x, row, false);
  run_cuda(c);
  return c.y;
}

at::Tensor gguf_pack_cuda(const at::Tensor& x, c10::string_view type) {
  const c10::cuda::CUDAGuard guard(x.device());
  GgufCall c = prepare_gguf(x, type_of(type), true);
  run_cuda(c);
  return c.packed;
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt, CUDA, m) {
  m.impl("fake_quant_gguf", &fake_quant_gguf_cuda);
  m.impl("gguf_pack", &gguf_pack_cuda);
}

}  // namespace mopt::ops
