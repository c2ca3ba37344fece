// Argument checking and kernel-parameter preparation shared by the CPU and CUDA implementations
// of the block_quant family (internal).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "block_quant/block_quant.h"

namespace mopt::ops {

/// Tensors kept alive for one block-quant kernel call, with its parameters.
struct BlockQuantCall {
  at::Tensor x;            // contiguous input
  at::Tensor global_amax;  // fp32, one element (NVFP4), or undefined
  at::Tensor block_amax;   // contiguous fp32 [rows, blocks_per_row], or undefined
  at::Tensor y;            // output, same shape and dtype as x
  kernels::block_quant::BlockQuantParams params;
};

/// Validates and prepares a call: x is viewed as [numel / x.size(-1), x.size(-1)] (a 0-dim x as
/// [1, 1]); global_amax is only read for NVFP4, where an absent one is computed on x's device.
BlockQuantCall prepare_block_quant(const at::Tensor& x, kernels::Format format,
                                   int64_t block_size, const c10::optional<at::Tensor>& global_amax,
                                   const c10::optional<at::Tensor>& block_amax);

}  // namespace mopt::ops
