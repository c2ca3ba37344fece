// CUDA launchers of the GPTQ column loop on the current stream (internal; compiled only when
// torch has CUDA).
#pragma once

#include <c10/core/Device.h>

#include "gptq/gptq.h"

namespace mopt::algorithms::detail {

#ifdef MOPT_WITH_CUDA_OPS
/// kernels::gptq::gptq_group_params_cuda on `device`'s current stream.
void gptq_group_params_cuda(const kernels::gptq::GroupParamsArgs& a, const c10::Device& device);
/// kernels::gptq::gptq_block_cuda on `device`'s current stream.
void gptq_block_cuda(const kernels::gptq::BlockArgs& a, const c10::Device& device);
/// kernels::gptq::sparsegpt_block_cuda on `device`'s current stream.
void sparsegpt_block_cuda(const kernels::gptq::PruneBlockArgs& a, const c10::Device& device);
#endif

}  // namespace mopt::algorithms::detail
