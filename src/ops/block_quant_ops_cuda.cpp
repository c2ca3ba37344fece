// CUDA implementations of the block_quant family (compiled only when torch has CUDA). Kernels run
// on the caller's current stream and never read anything back to the host.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "core/tensor_utils.h"
#include "ops/block_quant_common.h"

namespace mopt::ops {
namespace {

using kernels::Format;

// Runs the kernel, with device scratch from the caching allocator when the call needs some.
void run_cuda(BlockQuantCall& c) {
  const size_t bytes = kernels::block_quant::block_quant_workspace_bytes(c.params);
  at::Tensor workspace;
  if (bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(bytes)}, c.x.options().dtype(at::kByte));
    c.params.workspace = workspace.mutable_data_ptr();
  }
  core::call_kernel(
      [&] { kernels::block_quant::block_quant_cuda(c.params, at::cuda::getCurrentCUDAStream()); });
}

at::Tensor fake_quant_nvfp4_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& global_amax,
                                 int64_t block_size, const c10::optional<at::Tensor>& block_amax,
                                 bool) {
  const c10::cuda::CUDAGuard guard(x.device());
  BlockQuantCall c =
      prepare_block_quant(x, Format::kNVFP4, block_size, global_amax, block_amax);
  run_cuda(c);
  return c.y;
}

at::Tensor fake_quant_mx_cuda(const at::Tensor& x, int64_t exponent_bits, int64_t mantissa_bits,
                              int64_t block_size, const c10::optional<at::Tensor>& block_amax,
                              bool) {
  MOPT_CHECK_VALUE(
      exponent_bits >= 0 && exponent_bits <= 5 && mantissa_bits >= 1 && mantissa_bits <= 10,
      "MX element format E", exponent_bits, "M", mantissa_bits, " is not supported");
  const c10::cuda::CUDAGuard guard(x.device());
  BlockQuantCall c = prepare_block_quant(x, Format::kMX, block_size, c10::nullopt, block_amax);
  c.params.exponent_bits = static_cast<int>(exponent_bits);
  c.params.mantissa_bits = static_cast<int>(mantissa_bits);
  run_cuda(c);
  return c.y;
}

at::Tensor fake_quant_nf4_cuda(const at::Tensor& x, int64_t block_size, int64_t scale_block_size,
                               const c10::optional<at::Tensor>& block_amax, bool) {
  const c10::cuda::CUDAGuard guard(x.device());
  BlockQuantCall c =
      prepare_block_quant(x, Format::kNF4, block_size, c10::nullopt, block_amax);
  c.params.scale_block_size = scale_block_size;
  run_cuda(c);
  return c.y;
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt, CUDA, m) {
  m.impl("fake_quant_nvfp4", &fake_quant_nvfp4_cuda);
  m.impl("fake_quant_mx", &fake_quant_mx_cuda);
  m.impl("fake_quant_nf4", &fake_quant_nf4_cuda);
}

}  // namespace mopt::ops
