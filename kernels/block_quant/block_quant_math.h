// Per-element and per-block math of the block formats (SPEC §5): NVFP4 (E2M1 values, E4M3 block
// scales, fp32 tensor scale), OCP MX (E8M0 block scales over FP8/FP6/FP4/INT8 elements) and NF4
// (NormalFloat4 table, absmax blocks, optional int8 double quantization of the block scales).
// Shared verbatim by the CPU loops and the CUDA kernels, so both round and clamp identically.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/macros.h"
#include "fake_quant/fake_quant_math.h"

namespace mopt::kernels::block_quant {

constexpr float kE2M1Max = 6.0f;
constexpr float kE4M3Max = 448.0f;
constexpr float kFloatMax = 3.4028234663852886e38f;

/// True for an amax that can set a scale: positive and finite (false for 0, inf and NaN).
MOPT_HOST_DEVICE bool amax_is_valid(float amax) { return amax > 0.0f && amax <= kFloatMax; }

/// |x| as bits: for non-negative floats the unsigned order is the float order and every NaN is
/// above inf, so a max over these bits is exact, order independent and NaN-sticky on any device.
MOPT_HOST_DEVICE uint32_t abs_bits(float x) { return float_to_bits(x) & 0x7fffffffu; }

/// Reapplies the sign of `x` (bit 31) to a non-negative result.
MOPT_HOST_DEVICE float with_sign_of(float magnitude, float x) {
  return bits_to_float(float_to_bits(magnitude) | (float_to_bits(x) & 0x80000000u));
}

/// 2^e for e in [-127, 127] (2^-127 is an fp32 subnormal), built from bits.
MOPT_HOST_DEVICE float exp2_int(int e) {
  return e >= -126 ? bits_to_float(static_cast<uint32_t>(e + 127) << 23)
                   : bits_to_float(0x00400000u);
}

// ---------------------------------------------------------------------------------------------
// NVFP4

/// E2M1 magnitude {0, 0.5, 1, 1.5, 2, 3, 4, 6} nearest to a >= 0, ties to the even code, with the
/// SPEC thresholds (<=0.25 -> 0, <0.75 -> 0.5, <=1.25 -> 1, <1.75 -> 1.5, <=2.5 -> 2, <3.5 -> 3,
/// <=5 -> 4, else 6). One chain of selects (the CPU loop vectorizes it); NaN fails every
/// comparison and stays NaN.
MOPT_HOST_DEVICE float round_e2m1_magnitude(float a) {
  float q = a > 5.0f ? 6.0f : a;
  q = a <= 5.0f ? 4.0f : q;
  q = a < 3.5f ? 3.0f : q;
  q = a <= 2.5f ? 2.0f : q;
  q = a < 1.75f ? 1.5f : q;
  q = a <= 1.25f ? 1.0f : q;
  q = a < 0.75f ? 0.5f : q;
  q = a <= 0.25f ? 0.0f : q;
  return q;
}

/// NVFP4 tensor scale s2 = global_amax / (6 * 448); 0 when global_amax is not positive and finite
/// (then every block uses scale 1, as the reference's CUDA extension does).
MOPT_HOST_DEVICE float nvfp4_tensor_scale(float global_amax) {
  return amax_is_valid(global_amax) ? global_amax / (kE2M1Max * kE4M3Max) : 0.0f;
}

/// The E4M3 value of an NVFP4 block scale: e4m3(min(block_amax / (6 * s2), 448)).
MOPT_HOST_DEVICE float nvfp4_block_scale_e4m3(float block_amax, float s2) {
  float r = block_amax / (kE2M1Max * s2);
  r = r < kE4M3Max ? r : kE4M3Max;
  return fake_quant::round_to_minifloat(r, 3, -6, kE4M3Max);
}

/// True when a block's scale is e4m3 * s2 (nvfp4_block_scale_e4m3), false when it falls back to 1.
MOPT_HOST_DEVICE bool nvfp4_block_scale_is_e4m3(float block_amax, float s2) {
  return s2 > 0.0f && amax_is_valid(block_amax);
}

/// NVFP4 block scale s1 = e4m3(min(block_amax / (6 * s2), 448)) * s2; 1 for a zero, infinite or
/// NaN block amax or an unusable tensor scale. A block whose scale rounds to 0 in E4M3 outputs 0.
MOPT_HOST_DEVICE float nvfp4_block_scale(float block_amax, float s2) {
  // Computed unconditionally and selected at the end: no branch in the CPU block loop.
  const float s1 = nvfp4_block_scale_e4m3(block_amax, s2) * s2;
  return nvfp4_block_scale_is_e4m3(block_amax, s2) ? s1 : 1.0f;
}

/// One NVFP4 block: y = sign(x) * e2m1(|x| / s1) * s1, or 0 when s1 is 0; else NaN stays NaN.
struct Nvfp4Block {
  float s1;

  MOPT_HOST_DEVICE float operator()(float x) const {
    const float q = round_e2m1_magnitude(bits_to_float(abs_bits(x)) / s1) * s1;
    return with_sign_of(s1 == 0.0f ? 0.0f : q, x);
  }
};

/// NVFP4 with the tensor amax read once per kernel (it may live in device memory).
struct Nvfp4Op {
  const float* global_amax;

  struct Bound {
    float s2;
    MOPT_HOST_DEVICE Nvfp4Block block(float block_amax, int64_t /*block_index*/) const {
      return Nvfp4Block{nvfp4_block_scale(block_amax, s2)};
    }
  };
  MOPT_HOST_DEVICE Bound bind() const { return Bound{nvfp4_tensor_scale(*global_amax)}; }
};

// ---------------------------------------------------------------------------------------------
// MX

/// Largest element magnitude of an MX element format: the minifloat maximum for E >= 1
/// (E4M3 448, E5M2 57344, E3M2 28, E2M3 7.5, E2M1 6), 2^M - 1 for the sign-magnitude integers
/// E = 0 (MXINT8 = E0M7: 127).
MOPT_HOST_DEVICE float mx_element_max(int exponent_bits, int mantissa_bits) {
  if (exponent_bits == 0) return static_cast<float>((1 << mantissa_bits) - 1);
  return fake_quant::minifloat_max(exponent_bits, mantissa_bits);
}

/// E8M0 scale exponent k = ceil(log2(block_amax / elem_max)), computed exactly (no rounded
/// division) and clamped to the E8M0 range [-127, 127]. block_amax must be positive and finite.
MOPT_HOST_DEVICE int e8m0_exponent(float block_amax, float elem_max) {
  int bias = 0;
  float a = block_amax;
  if (a < 1.17549435e-38f) {  // subnormal: normalize exactly by 2^64
    a *= 18446744073709551616.0f;
    bias = 64;
  }
  const uint32_t ab = float_to_bits(a), mb = float_to_bits(elem_max);
  const int ea = static_cast<int>(ab >> 23) - 127 - bias;
  const int em = static_cast<int>(mb >> 23) - 127;
  // block_amax / elem_max = (ma / mm) * 2^(ea - em) with ma / mm in (1/2, 2): the ceil of its log2
  // is ea - em, plus one when the significand of block_amax exceeds that of elem_max.
  int k = ea - em + ((ab & 0x7fffffu) > (mb & 0x7fffffu) ? 1 : 0);
  k = k < -127 ? -127 : k;
  k = k > 127 ? 127 : k;
  return k;
}

/// MX element rounding of a minifloat format (ties to even, saturating, NaN kept).
struct MxFloatElement {
  int mantissa_bits;
  int min_exponent;
  float max_value;
  MOPT_HOST_DEVICE float operator()(float v) const {
    return fake_quant::round_to_minifloat(v, mantissa_bits, min_exponent, max_value);
  }
};

/// MX element rounding of a sign-magnitude integer (ties to even, saturating at +-max, NaN kept).
struct MxIntElement {
  float max_value;
  MOPT_HOST_DEVICE float operator()(float v) const {
    v = v < -max_value ? -max_value : v;
    v = v > max_value ? max_value : v;
    return fake_quant::round_half_even(v);
  }
};

/// One MX block: y = elem(x * 2^-k) * 2^k (both products exact powers of two).
template <typename Elem>
struct MxBlock {
  Elem elem;
  float inv_scale;
  float scale;
  MOPT_HOST_DEVICE float operator()(float x) const { return elem(x * inv_scale) * scale; }
};

/// MX with element rounding `Elem`. A zero block amax gives scale 1; an infinite or NaN one gives
/// the E8M0 NaN scale, so the whole block is NaN (as the MX reference implementation,
/// microxcaling, does): an element format without Inf must not turn Inf into its largest value.
template <typename Elem>
struct MxOp {
  Elem elem;
  float elem_max;

  struct Bound {
    Elem elem;
    float elem_max;
    MOPT_HOST_DEVICE MxBlock<Elem> block(float block_amax, int64_t /*block_index*/) const {
      if (!(block_amax <= kFloatMax)) {  // Inf or NaN
        const float nan = bits_to_float(0x7fc00000u);
        return MxBlock<Elem>{elem, nan, nan};
      }
      if (!amax_is_valid(block_amax)) return MxBlock<Elem>{elem, 1.0f, 1.0f};
      const int k = e8m0_exponent(block_amax, elem_max);
      return MxBlock<Elem>{elem, exp2_int(-k), exp2_int(k)};
    }
  };
  MOPT_HOST_DEVICE Bound bind() const { return Bound{elem, elem_max}; }
};

// ---------------------------------------------------------------------------------------------
// NF4

/// NormalFloat4 value nearest to v (v = x / absmax, in [-1, 1]); the boundaries are the fp32
/// midpoints of neighbouring table entries and a value on a boundary takes the lower entry (the
/// first minimum of |v - table|). NaN stays NaN: every comparison fails, so q keeps v. Written
/// as one chain of selects, which the CPU loop vectorizes.
MOPT_HOST_DEVICE float nf4_round(float v) {
  float q = v > 0.5f * (0.7230f + 1.0f) ? 1.0f : v;
  q = v <= 0.5f * (0.7230f + 1.0f) ? 0.7230f : q;
  q = v <= 0.5f * (0.5626f + 0.7230f) ? 0.5626f : q;
  q = v <= 0.5f * (0.4407f + 0.5626f) ? 0.4407f : q;
  q = v <= 0.5f * (0.3379f + 0.4407f) ? 0.3379f : q;
  q = v <= 0.5f * (0.2461f + 0.3379f) ? 0.2461f : q;
  q = v <= 0.5f * (0.1609f + 0.2461f) ? 0.1609f : q;
  q = v <= 0.5f * (0.0796f + 0.1609f) ? 0.0796f : q;
  q = v <= 0.5f * (0.0f + 0.0796f) ? 0.0f : q;
  q = v <= 0.5f * (-0.0911f + 0.0f) ? -0.0911f : q;
  q = v <= 0.5f * (-0.1848f + -0.0911f) ? -0.1848f : q;
  q = v <= 0.5f * (-0.2844f + -0.1848f) ? -0.2844f : q;
  q = v <= 0.5f * (-0.3949f + -0.2844f) ? -0.3949f : q;
  q = v <= 0.5f * (-0.5251f + -0.3949f) ? -0.5251f : q;
  q = v <= 0.5f * (-0.6962f + -0.5251f) ? -0.6962f : q;
  q = v <= 0.5f * (-1.0f + -0.6962f) ? -1.0f : q;
  return q;
}

/// Divisor that maps a block onto [-1, 1]: its absmax, or 1 when that is zero, infinite or NaN.
MOPT_HOST_DEVICE float nf4_divisor(float absmax) { return amax_is_valid(absmax) ? absmax : 1.0f; }

/// The block scale that double quantization sees: the absmax (0 for an all-zero block), or 1 when
/// it is infinite or NaN, so one bad block cannot spoil the statistics of the others.
MOPT_HOST_DEVICE float nf4_stat_scale(float absmax) {
  return absmax >= 0.0f && absmax <= kFloatMax ? absmax : 1.0f;
}

/// Scales per partial sum of the double-quantization mean: the mean is the fp64 sum of fixed
/// chunks (each summed in order) added in chunk order, the same on every device.
constexpr int64_t kNf4SumChunk = 256;

/// fp64 sum of nf4_stat_scale(absmax[i]) for i in [begin, end), in index order.
MOPT_HOST_DEVICE double nf4_scale_sum(const float* absmax, int64_t begin, int64_t end) {
  double acc = 0.0;
  for (int64_t i = begin; i < end; ++i) acc += static_cast<double>(nf4_stat_scale(absmax[i]));
  return acc;
}

/// Largest int8 code of the double-quantized scales.
constexpr float kNf4ScaleMaxbound = 127.0f;

/// The int8 code of one block scale s under double quantization around the mean with the scale
/// block's dq_amax = max |s - mean|: clamp(rne((s - mean) * 127 / dq_amax)) (0 when dq_amax is
/// not positive).
MOPT_HOST_DEVICE float nf4_scale_code(float s, float mean, float dq_amax) {
  if (!(dq_amax > 0.0f)) return 0.0f;
  const float dq_scale = kNf4ScaleMaxbound / dq_amax;
  float v = (s - mean) * dq_scale;
  v = v < -kNf4ScaleMaxbound ? -kNf4ScaleMaxbound : v;
  v = v > kNf4ScaleMaxbound ? kNf4ScaleMaxbound : v;
  return fake_quant::round_half_even(v);
}

/// The block scale an int8 code of nf4_scale_code stands for: code / (127 / dq_amax) + mean,
/// never negative; the mean alone (or 0) when dq_amax is not positive.
MOPT_HOST_DEVICE float nf4_scale_from_code(float code, float mean, float dq_amax) {
  if (!(dq_amax > 0.0f)) return mean > 0.0f ? mean : 0.0f;
  const float out = code / (kNf4ScaleMaxbound / dq_amax) + mean;
  return out > 0.0f ? out : 0.0f;
}

/// Double quantization of one block scale s: s' = nf4_scale_from_code(nf4_scale_code(s)), never
/// negative (a negative scale would flip the block's signs).
MOPT_HOST_DEVICE float nf4_dequantized_scale(float s, float mean, float dq_amax) {
  return nf4_scale_from_code(nf4_scale_code(s, mean, dq_amax), mean, dq_amax);
}

/// One NF4 block: y = nf4(x / divisor) * out_scale; NaN stays NaN.
struct Nf4Block {
  float divisor;
  float out_scale;
  MOPT_HOST_DEVICE float operator()(float x) const { return nf4_round(x / divisor) * out_scale; }
};

/// NF4 with the block absmax as divisor and, after double quantization, the dequantized scales
/// (one per block, in block order) as output scales.
struct Nf4Op {
  const float* out_scales;  // nullptr: no double quantization (output scale = divisor)

  struct Bound {
    const float* out_scales;
    MOPT_HOST_DEVICE Nf4Block block(float absmax, int64_t block_index) const {
      const float d = nf4_divisor(absmax);
      return Nf4Block{d, out_scales != nullptr ? out_scales[block_index] : d};
    }
  };
  MOPT_HOST_DEVICE Bound bind() const { return Bound{out_scales}; }
};

}  // namespace mopt::kernels::block_quant
