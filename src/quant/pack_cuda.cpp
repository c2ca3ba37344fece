// CUDA launches of the pack kernels (compiled only when torch has CUDA): the current stream of
// the tensors' device, scratch from the caching allocator.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include "core/tensor_utils.h"
#include "quant/pack_launch.h"

namespace mopt {

void run_pack_cuda(const kernels::pack::PackParams& p, const c10::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  const size_t bytes = kernels::pack::pack_workspace_bytes(p);
  at::Tensor workspace;
  if (bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(bytes)},
                          at::TensorOptions().device(device).dtype(at::kByte));
  }
  core::call_kernel([&] {
    kernels::pack::pack_cuda(p, bytes > 0 ? workspace.mutable_data_ptr() : nullptr,
                             at::cuda::getCurrentCUDAStream());
  });
}

void run_dequantize_cuda(const kernels::pack::PackParams& p, const c10::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  core::call_kernel(
      [&] { kernels::pack::dequantize_cuda(p, at::cuda::getCurrentCUDAStream()); });
}

}  // namespace mopt
