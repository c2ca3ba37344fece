// Dynamic block formats of the quantizer forward (internal): NVFP4, MX and NF4.
#pragma once

#include <ATen/core/Tensor.h>

#include "mopt/quant/config.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {

/// Fake-quantizes x in a block format along the config's blocked axis. global_amax is the
/// calibrated per-tensor amax (NVFP4's tensor scale), or undefined to use the input's own.
at::Tensor quantize_block_format(const at::Tensor& x, const at::Tensor& global_amax,
                                 const QuantizerAttributeConfig& cfg, QuantKind kind);

}  // namespace mopt
