// Block formats of the quantizer forward (internal): NVFP4, MX and NF4, dynamic or static.
#pragma once

#include <ATen/core/Tensor.h>

#include "mopt/quant/config.h"
#include "mopt/quant/quantize_tensor.h"

namespace mopt {

/// What a block-format config asks of the kernels, validated once per call (cheap).
struct BlockFormatPlan {
  int64_t axis = -1;  // blocked axis, normalized
  int64_t block_size = 0;
  bool dynamic = true;
  int exponent_bits = 0;  // MX element format; E0Mm is the sign-magnitude integer
  int mantissa_bits = 0;
  int64_t scale_block_size = 0;  // NF4 double quantization (see fake_quant_nf4)
};

/// The plan of a block-format config for an input of `ndim` dims; ValueError for block_sizes
/// the format cannot take.
BlockFormatPlan block_format_plan(const QuantizerAttributeConfig& cfg, const ResolvedFormat& f,
                                  int64_t ndim);

/// Fake-quantizes x in a block format along the config's one blocked axis (moved last for the
/// kernels and back; a partial last block counts as zero padded). `amax` is what the quantizer
/// calibrated, or undefined: for dynamic blocks only NVFP4 reads it, as the one-element tensor
/// amax behind its tensor scale (undefined: the input's own); static blocks read it as the
/// per-block amax in the shape of the calibration view (undefined: each block's own).
at::Tensor quantize_block_format(const at::Tensor& x, const at::Tensor& amax,
                                 const QuantizerAttributeConfig& cfg,
                                 const ResolvedFormat& format);

}  // namespace mopt
