// Per-element math of integer and minifloat (FP8, FP6, FP4) fake quantization.
// Shared verbatim by the CPU loops and the CUDA kernels: same rounding, same clamping.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/macros.h"

namespace mopt::kernels::fake_quant {

/// amax at or below this value quantizes everything to zero (the smallest fp16 subnormal).
constexpr float kMinAmax = 5.9604644775390625e-8f;  // 2^-24

/// Round half to even for |v| < 2^22, NaN preserved. Adding and removing 1.5 * 2^23 moves v into
/// a binade whose spacing is 1, where the FPU's default rounding is exactly half-to-even; this
/// vectorizes on every x86-64 (no SSE4.1 roundps needed) and is exact on CUDA.
MOPT_HOST_DEVICE float round_half_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

/// Largest quantized integer magnitude: 2^(bits - 1 + unsigned) - 1.
MOPT_HOST_DEVICE float int_maxbound(int num_bits, bool is_unsigned) {
  return static_cast<float>((1 << (num_bits - 1 + (is_unsigned ? 1 : 0))) - 1);
}

/// Smallest quantized integer: 0 if unsigned, -maxbound if narrow range, else -maxbound - 1.
MOPT_HOST_DEVICE float int_minbound(int num_bits, bool is_unsigned, bool narrow_range) {
  if (is_unsigned) return 0.0f;
  const float maxb = int_maxbound(num_bits, false);
  return narrow_range ? -maxb : -maxb - 1.0f;
}

/// The value amax maps to: maxbound, or maxbound + 1/2 for a full-range signed format (codes
/// -2^(b-1) .. 2^(b-1)-1 spread over [-amax, amax], scale amax / (2^(b-1) - 1/2), as
/// llm-compressor and GPTQ's reference quantizer use all 2^b levels).
MOPT_HOST_DEVICE float int_scale_bound(int num_bits, bool is_unsigned, bool full_range) {
  return int_maxbound(num_bits, is_unsigned) + (full_range ? 0.5f : 0.0f);
}

/// Integer fake quantization of one value: clamp(round_half_even(x * scale)) / scale.
/// Clamping before rounding is equivalent (the bounds are integers) and keeps |v| < 2^22.
struct IntQuant {
  float minbound;
  float maxbound;
  float scale_bound;  // the value amax maps to (int_scale_bound)

  /// The range maximum that amax maps to.
  MOPT_HOST_DEVICE float max_value() const { return scale_bound; }

  MOPT_HOST_DEVICE float operator()(float x, float scale) const {
    float v = x * scale;
    v = v < minbound ? minbound : v;  // comparisons keep NaN
    v = v > maxbound ? maxbound : v;
    return round_half_even(v) / scale;
  }
};

/// Asymmetric integer fake quantization with an integer zero point zp (a code in
/// [minbound, maxbound]): clamp(round_half_even(x * scale) + zp) - zp, over scale. The code grid
/// is shifted by zp, so zero stays exact. Clamping before rounding is equivalent (integer bounds).
MOPT_HOST_DEVICE float int_quant_zp(const IntQuant& q, float x, float scale, float zp) {
  float v = x * scale + zp;
  v = v < q.minbound ? q.minbound : v;
  v = v > q.maxbound ? q.maxbound : v;
  return (round_half_even(v) - zp) / scale;
}

/// int_quant_zp with a scale from scale_from_amax (0 -> output 0), branch-free like apply_scaled.
MOPT_HOST_DEVICE float apply_scaled_zp(const IntQuant& q, float x, float scale, float zp) {
  const float y = int_quant_zp(q, x, scale, zp);
  return scale == 0.0f ? 0.0f : y;
}

/// The asymmetric range of values in [lo, hi] for a signed b-bit format over all 2^b codes: the
/// range widened to hold 0, its half width `amax` (the scale is (2^(b-1) - 1/2) / amax, so the
/// 2^b - 1 steps span hi - lo) and the zero point, the code of 0: round(qmin - lo * scale)
/// clamped to [qmin, qmax] (llm-compressor's and AutoAWQ's min/max rule, in signed codes).
/// amax at or below kMinAmax (an all-zero range) gives zero point 0.
struct AsymRange {
  float amax;
  float zero_point;
};

MOPT_HOST_DEVICE AsymRange int_asym_range(float lo, float hi, int num_bits) {
  lo = lo > 0.0f ? 0.0f : lo;  // NaN compares false: it stays and shows in amax
  hi = hi < 0.0f ? 0.0f : hi;
  const float amax = (hi - lo) * 0.5f;
  const float qmin = int_minbound(num_bits, false, false);
  const float qmax = int_maxbound(num_bits, false);
  const float scale = amax <= kMinAmax ? 0.0f : (qmax + 0.5f) / amax;
  float zp = round_half_even(qmin - lo * scale);
  zp = zp < qmin ? qmin : zp;
  zp = zp > qmax ? qmax : zp;
  return AsymRange{amax, scale == 0.0f ? 0.0f : zp};
}

/// The IntQuant of a format: narrow_range drops the most negative code; full_range (signed,
/// not narrow) maps amax to maxbound + 1/2.
MOPT_HOST_DEVICE IntQuant make_int_quant(int num_bits, bool is_unsigned, bool narrow_range,
                                         bool full_range) {
  return IntQuant{int_minbound(num_bits, is_unsigned, narrow_range),
                  int_maxbound(num_bits, is_unsigned),
                  int_scale_bound(num_bits, is_unsigned, full_range)};
}

/// Largest finite value of a minifloat with `exponent_bits` / `mantissa_bits`:
/// E4M3 (FN, no infinity) 448, E5M2 (IEEE, with infinity) 57344, OCP FP6/FP4 (no inf/NaN codes)
/// E3M2 28, E2M3 7.5, E2M1 6.
MOPT_HOST_DEVICE float minifloat_max(int exponent_bits, int mantissa_bits) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  int max_exp = (1 << exponent_bits) - 1 - bias;  // every exponent code is finite (OCP FP6/FP4)
  float max_mantissa = 2.0f - 1.0f / static_cast<float>(1 << mantissa_bits);
  if (exponent_bits == 5) max_exp -= 1;  // E5M2 keeps IEEE infinity/NaN codes
  if (exponent_bits == 4 && mantissa_bits == 3) {
    max_mantissa -= 1.0f / static_cast<float>(1 << mantissa_bits);  // S.1111.111 is NaN
  }
  float p = 1.0f;
  for (int i = 0; i < max_exp; ++i) p *= 2.0f;
  return max_mantissa * p;
}

/// Smallest normal exponent of the format (1 - bias).
MOPT_HOST_DEVICE int minifloat_min_exponent(int exponent_bits) {
  return 2 - (1 << (exponent_bits - 1));
}

/// Rounds x to the nearest value of a minifloat format (ties to even, subnormals included),
/// saturating at +-max_value; NaN stays NaN (the same bits). Branch-free, so loops vectorize.
MOPT_HOST_DEVICE float round_to_minifloat(float x, int mantissa_bits, int min_exponent,
                                          float max_value) {
  const uint32_t bits = float_to_bits(x);
  const uint32_t sign = bits & 0x80000000u;
  float a = bits_to_float(bits & 0x7fffffffu);
  const bool is_nan = a != a;
  a = a > max_value ? max_value : a;
  int e = static_cast<int>((float_to_bits(a) >> 23) & 0xffu) - 127;  // floor(log2 a) for normals
  e = e < min_exponent ? min_exponent : e;
  // a * 2^(mantissa_bits - e) is exact (power-of-two scaling inside the fp32 range). For NaN
  // the exponents are meaningless (and unsigned, so well defined); its result is not used.
  const float up = bits_to_float(static_cast<uint32_t>(127 + mantissa_bits - e) << 23);
  const float down = bits_to_float(static_cast<uint32_t>(127 - mantissa_bits + e) << 23);
  float q = round_half_even(a * up) * down;
  q = q > max_value ? max_value : q;
  return is_nan ? x : bits_to_float(float_to_bits(q) | sign);
}

/// Minifloat fake quantization of one value: minifloat(x * scale) / scale.
struct MinifloatQuant {
  int mantissa_bits;
  int min_exponent;
  float maxval;

  MOPT_HOST_DEVICE float max_value() const { return maxval; }

  MOPT_HOST_DEVICE float operator()(float x, float scale) const {
    return round_to_minifloat(x * scale, mantissa_bits, min_exponent, maxval) / scale;
  }
};

/// Scale that maps amax onto the format's maximum; 0 marks "quantize to zero".
MOPT_HOST_DEVICE float scale_from_amax(float amax, float max_value) {
  return amax <= kMinAmax ? 0.0f : max_value / amax;
}

/// Applies q with a scale from scale_from_amax (0 -> output 0). q runs unconditionally (with a
/// zero scale it makes a NaN that the select drops) so that a loop over it has no branch.
template <typename Q>
MOPT_HOST_DEVICE float apply_scaled(const Q& q, float x, float scale) {
  const float y = q(x, scale);
  return scale == 0.0f ? 0.0f : y;
}

}  // namespace mopt::kernels::fake_quant
