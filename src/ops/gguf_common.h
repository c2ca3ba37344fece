// Argument checking shared by the CPU and CUDA implementations of the gguf family (internal).
#pragma once

#include <ATen/core/Tensor.h>

#include "gguf/gguf.h"

namespace mopt::ops {

/// Tensors kept alive for one gguf kernel call, with its parameters.
struct GgufCall {
  at::Tensor x;       // contiguous input
  at::Tensor y;       // fake-quantized output, or undefined
  at::Tensor packed;  // uint8 [rows, bytes per row], or undefined
  kernels::gguf::GgufParams params;
};

/// Prepares fake quantization (pack = false) or packing of x in `type` (already resolved to the
/// row's type; not f32).
GgufCall prepare_gguf(const at::Tensor& x, kernels::gguf::GgufType type, bool pack);

}  // namespace mopt::ops
