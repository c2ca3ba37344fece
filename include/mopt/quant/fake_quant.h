// Fake quantization and amax reductions on at::Tensor. Each function calls the corresponding
// torch.ops.mopt operator through the dispatcher, so it has CPU, CUDA, Meta and Autograd
// implementations whether it is called from C++ or Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace mopt {

/// Integer fake quantization: clamp(round_half_even(x * s), min, max) / s with s = maxbound /
/// amax in fp32; amax broadcasts over x as a keepdims reduction (scalar = per tensor).
/// full_range (signed, not narrow_range): s = (maxbound + 1/2) / amax, so the 2^b codes
/// -2^(b-1) .. 2^(b-1)-1 cover [-amax, amax].
/// Gradient: straight-through where |x| <= amax, or everywhere with pass_through_bwd.
at::Tensor fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int64_t num_bits = 8,
                          bool is_unsigned = false, bool narrow_range = false,
                          bool pass_through_bwd = false, bool full_range = false);

/// Asymmetric integer fake quantization: (clamp(round_half_even(x * s) + zp, -2^(b-1),
/// 2^(b-1)-1) - zp) / s with s = (2^(b-1) - 1/2) / amax; zero_point (integer codes, amax's
/// shape) shifts the code grid so that [-amax, amax] + offset is covered and zero is exact.
/// Gradient: straight-through inside the representable range, or everywhere with
/// pass_through_bwd.
at::Tensor fake_quant_int_asym(const at::Tensor& x, const at::Tensor& amax,
                               const at::Tensor& zero_point, int64_t num_bits = 8,
                               bool pass_through_bwd = false);

/// The asymmetric (amax, zero point) of ranges [lo, hi] element-wise (kernels' int_asym_range:
/// the range widened to hold 0, amax its half width, the zero point the code of 0).
std::tuple<at::Tensor, at::Tensor> int_asym_range(const at::Tensor& lo, const at::Tensor& hi,
                                                  int64_t num_bits);

/// Minifloat fake quantization (E4M3 = (4, 3), E5M2 = (5, 2), FP6, FP4): round to nearest even in
/// the format after scaling amax to the format maximum; saturating. amax = nullopt casts unscaled.
at::Tensor fake_quant_fp(const at::Tensor& x, const c10::optional<at::Tensor>& amax,
                         int64_t exponent_bits = 4, int64_t mantissa_bits = 3,
                         bool pass_through_bwd = false);

/// max |x| over every dim not in keep_axes, keepdims, as fp32. NaN anywhere in a slot gives NaN.
at::Tensor compute_amax(const at::Tensor& x, at::IntArrayRef keep_axes = {});

/// Signed (min, max) of x over every dim not in keep_axes, keepdims, as fp32 (asymmetric
/// calibration and dynamic asymmetric quantization).
std::tuple<at::Tensor, at::Tensor> compute_min_max(const at::Tensor& x,
                                                   at::IntArrayRef keep_axes = {});

/// Largest finite value of the minifloat format (448 for E4M3, 57344 for E5M2, 6 for E2M1, ...).
double minifloat_max_value(int64_t exponent_bits, int64_t mantissa_bits);

}  // namespace mopt
