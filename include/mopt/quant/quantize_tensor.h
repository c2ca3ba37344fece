// The forward of a TensorQuantizer as one function of (input, amax, pre_quant_scale, config):
// pre-quant scale, block reshape with zero padding, static or dynamic amax, fake quantization in
// the configured format, and the reshape back. Python's TensorQuantizer and the C++
// mopt::TensorQuantizer module both call it, so both give the same numbers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <vector>

#include "mopt/quant/config.h"
#include "mopt/quant/formats.h"

namespace mopt {

/// Fake-quantizes x * pre_quant_scale as `cfg_json` (a QuantizerAttributeConfig in JSON)
/// describes. amax is the calibrated amax in the shape of quantizer_amax_shape; when it is absent
/// (or the config is dynamic) the amax of the input is used. An asymmetric config takes the
/// zero point stored with amax (same shape), or the input's own min/max range when dynamic.
/// Differentiable (clipped STE; an amax that requires grad gets the LSQ gradient). amax_post
/// (LSQ with separate amaxes, static symmetric integer/minifloat only): dequantize with it,
/// y = Q(x / s) * s_post with s = amax / B, s_post = amax_post / B.
at::Tensor quantize_tensor(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                           const c10::optional<at::Tensor>& pre_quant_scale,
                           const std::string& cfg_json,
                           const c10::optional<at::Tensor>& zero_point = c10::nullopt,
                           const c10::optional<at::Tensor>& amax_post = c10::nullopt);

/// The tensor a calibrator of this quantizer sees: x * pre_quant_scale, reshaped into
/// [..., n_blocks, block, ...] (zero padded) for static block quantization.
at::Tensor quantizer_calib_view(const at::Tensor& x,
                                const c10::optional<at::Tensor>& pre_quant_scale,
                                const std::string& cfg_json);

/// Axes of the calibration view kept in amax, for an input of `ndim` dims.
std::vector<int64_t> quantizer_amax_axes(const QuantizerAttributeConfig& cfg, int64_t ndim);

}  // namespace mopt
