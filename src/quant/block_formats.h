// Block formats of the quantizer forward (internal): NVFP4, MX and NF4, dynamic or static.
#pragma once

#include <ATen/core/Tensor.h>

#include "mopt/quant/config.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {

/// Fake-quantizes x in a block format along the config's one blocked axis (moved last for the
/// kernels and back; a partial last block counts as zero padded). `amax` is what the quantizer
/// calibrated, or undefined: for dynamic blocks only NVFP4 reads it, as the one-element tensor
/// amax behind its tensor scale (undefined: the input's own); static blocks read it as the
/// per-block amax in the shape of the calibration view (undefined: each block's own).
at::Tensor quantize_block_format(const at::Tensor& x, const at::Tensor& amax,
                                 const QuantizerAttributeConfig& cfg,
                                 const ResolvedFormat& format);

}  // namespace mopt
