// CUDA launchers of the GPTQ column loop (compiled only when torch has CUDA): the caller's
// current stream, no synchronization.
#include "algorithms/gptq_cuda.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace mopt::algorithms::detail {

void gptq_group_params_cuda(const kernels::gptq::GroupParamsArgs& a, const c10::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  kernels::gptq::gptq_group_params_cuda(a, c10::cuda::getCurrentCUDAStream(device.index()));
}

void gptq_block_cuda(const kernels::gptq::BlockArgs& a, const c10::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  kernels::gptq::gptq_block_cuda(a, c10::cuda::getCurrentCUDAStream(device.index()));
}

void sparsegpt_block_cuda(const kernels::gptq::PruneBlockArgs& a, const c10::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  kernels::gptq::sparsegpt_block_cuda(a, c10::cuda::getCurrentCUDAStream(device.index()));
}

}  // namespace mopt::algorithms::detail
