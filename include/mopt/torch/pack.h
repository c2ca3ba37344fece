// Packed weights from the C++ module API: mopt::pack_weight over a mopt::TensorQuantizer module
// (its amax, pre_quant_scale and zero point buffers), the same PackedWeight Python's
// mopt.quantization.pack_weight returns.
#pragma once

#include <ATen/core/Tensor.h>

#include "mopt/quant/pack.h"
#include "mopt/torch/tensor_quantizer.h"

namespace mopt {

/// Packs `weight` as `quantizer` fake-quantizes it: pack_weight(w, q).dequantize() equals
/// q->forward(w) bit for bit (errors as mopt::pack_weight).
inline PackedWeight pack_weight(const at::Tensor& weight, const TensorQuantizerImpl& quantizer) {
  return pack_weight(weight, quantizer.core(), quantizer.amax(), quantizer.pre_quant_scale(),
                     quantizer.zero_point());
}

}  // namespace mopt
