// Per-element math of packed weights: the code each format stores for an element and the value a
// code stands for. Encoding replays the fake-quant kernels' own operations up to the rounded
// value (fake_quant_math.h, block_quant_math.h) and stores that rounded value as a code;
// decoding turns the code back into the same float and finishes with the same final operation
// the fake-quant kernel applies (a division by the integer/minifloat scale, a product with the
// block scale), so dequantize(pack(x)) is bit for bit the fake-quantized x.
//
// Values per format (s = scale_from_amax(amax, bound) = bound / amax, the kernels' multiplier):
//   int (sym):   code r (signed), value r / s                    (0 where s == 0)
//   int (asym):  code u = r - qmin (unsigned), zero point zu = zp - qmin, value ((u + qmin) -
//                (zu + qmin)) / s, i.e. (u - zu) * amax / bound up to the last rounding
//   minifloat:   code = the minifloat's bits of m = minifloat(x * s), value m / s
//   nvfp4:       code = E2M1 bits (bit 3 sign), value sign * e2m1(code) * (e4m3(scale) * scale_2)
//   mx:          code = element bits (int8 for MXINT), value elem(code) * 2^(e8m0 - 127)
//   nf4:         code = table index 0..15, value nf4_table[code] * block scale (absmax, or the
//                double-quantized scale code / (127 / dq_amax) + mean)
#pragma once

#include <cstdint>

#include "block_quant/block_quant_math.h"
#include "common/dtype.h"
#include "common/layout.h"
#include "common/macros.h"
#include "fake_quant/fake_quant_math.h"

namespace mopt::kernels::pack {

/// Bits of a minifloat code with `exponent_bits` / `mantissa_bits` (sign included).
MOPT_HOST_DEVICE int minifloat_code_bits(int exponent_bits, int mantissa_bits) {
  return 1 + exponent_bits + mantissa_bits;
}

/// The bit pattern of m in the minifloat (E, M) with bias 2^(E-1) - 1 (subnormals included).
/// m must be a finite value of the format (what round_to_minifloat returns); -0 keeps its sign.
MOPT_HOST_DEVICE uint32_t minifloat_encode(float m, int exponent_bits, int mantissa_bits) {
  const uint32_t bits = float_to_bits(m);
  const uint32_t sign = (bits >> 31) << (exponent_bits + mantissa_bits);
  const float a = bits_to_float(bits & 0x7fffffffu);
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const int min_exponent = 1 - bias;
  const int e = static_cast<int>((float_to_bits(a) >> 23) & 0xffu) - 127;
  if (a == 0.0f) return sign;
  if (e < min_exponent) {  // subnormal: a = mant * 2^(min_exponent - M), exactly
    const float mant = a * block_quant::exp2_int(mantissa_bits - min_exponent);
    return sign | static_cast<uint32_t>(mant);
  }
  const float mant = a * block_quant::exp2_int(mantissa_bits - e);  // in [2^M, 2^(M+1))
  const uint32_t field = static_cast<uint32_t>(e + bias) << mantissa_bits;
  return sign | field | (static_cast<uint32_t>(mant) - (1u << mantissa_bits));
}

/// The value of minifloat bits `code` (the inverse of minifloat_encode; exact in fp32).
MOPT_HOST_DEVICE float minifloat_decode(uint32_t code, int exponent_bits, int mantissa_bits) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const uint32_t mant = code & ((1u << mantissa_bits) - 1u);
  const int field = static_cast<int>((code >> mantissa_bits) & ((1u << exponent_bits) - 1u));
  const bool negative = ((code >> (exponent_bits + mantissa_bits)) & 1u) != 0;
  float a;
  if (field == 0) {
    a = static_cast<float>(mant) * block_quant::exp2_int(1 - bias - mantissa_bits);
  } else {
    a = static_cast<float>(mant + (1u << mantissa_bits)) *
        block_quant::exp2_int(field - bias - mantissa_bits);
  }
  return negative ? -a : a;
}

// ---------------------------------------------------------------------------------------------
// int and minifloat (fake_quant's IntQuant / int_quant_zp / MinifloatQuant up to the division)

/// The rounded integer fake_quant's IntQuant reaches before dividing by s (as a float).
MOPT_HOST_DEVICE float int_code(const fake_quant::IntQuant& q, float x, float scale) {
  float v = x * scale;
  v = v < q.minbound ? q.minbound : v;
  v = v > q.maxbound ? q.maxbound : v;
  return fake_quant::round_half_even(v);
}

/// The rounded code int_quant_zp reaches before subtracting zp and dividing by s.
MOPT_HOST_DEVICE float int_code_zp(const fake_quant::IntQuant& q, float x, float scale,
                                   float zp) {
  float v = x * scale + zp;
  v = v < q.minbound ? q.minbound : v;
  v = v > q.maxbound ? q.maxbound : v;
  return fake_quant::round_half_even(v);
}

/// The value of integer code r (zero point zp, 0 when symmetric) at multiplier s: apply_scaled's
/// and apply_scaled_zp's final operation.
MOPT_HOST_DEVICE float int_value(float r, float zp, float scale) {
  const float y = (r - zp) / scale;
  return scale == 0.0f ? 0.0f : y;
}

/// The same for a symmetric code (no subtraction, as IntQuant computes it).
MOPT_HOST_DEVICE float int_value_sym(float r, float scale) {
  const float y = r / scale;
  return scale == 0.0f ? 0.0f : y;
}

/// The minifloat value fake_quant's MinifloatQuant reaches before dividing by s.
MOPT_HOST_DEVICE float minifloat_rounded(const fake_quant::MinifloatQuant& q, float x,
                                         float scale) {
  return fake_quant::round_to_minifloat(x * scale, q.mantissa_bits, q.min_exponent, q.maxval);
}

/// The value of a minifloat element m at multiplier s.
MOPT_HOST_DEVICE float minifloat_value(float m, float scale) {
  const float y = m / scale;
  return scale == 0.0f ? 0.0f : y;
}

// ---------------------------------------------------------------------------------------------
// NVFP4

/// E2M1 code (bit 3 the sign of x) of one NVFP4 element with block scale s1.
MOPT_HOST_DEVICE uint32_t nvfp4_code(float x, float s1) {
  const float q = block_quant::round_e2m1_magnitude(bits_to_float(block_quant::abs_bits(x)) / s1);
  const uint32_t mag = s1 == 0.0f ? 0u : minifloat_encode(q, 2, 1);
  return mag | ((float_to_bits(x) >> 28) & 0x8u);
}

/// Value of an NVFP4 code with block scale s1 (= e4m3 scale * tensor scale): Nvfp4Block's result.
MOPT_HOST_DEVICE float nvfp4_value(uint32_t code, float s1) {
  const float q = minifloat_decode(code & 0x7u, 2, 1) * s1;
  const float mag = s1 == 0.0f ? 0.0f : q;
  return (code & 0x8u) != 0 ? bits_to_float(float_to_bits(mag) | 0x80000000u) : mag;
}

// ---------------------------------------------------------------------------------------------
// MX

/// E8M0 code of a block: k + 127, with k the exponent MxOp's block scale 2^k uses (0 for a zero
/// block amax). block_amax must be finite.
MOPT_HOST_DEVICE uint32_t mx_scale_code(float block_amax, float elem_max) {
  if (!block_quant::amax_is_valid(block_amax)) return 127u;
  return static_cast<uint32_t>(block_quant::e8m0_exponent(block_amax, elem_max) + 127);
}

/// Element code of an MX element value v = elem(x * 2^-k): minifloat bits, or the integer as an
/// 8-bit two's complement pattern for MXINT (exponent_bits 0).
MOPT_HOST_DEVICE uint32_t mx_element_code(float v, int exponent_bits, int mantissa_bits) {
  if (exponent_bits == 0) return static_cast<uint32_t>(static_cast<int32_t>(v)) & 0xffu;
  return minifloat_encode(v, exponent_bits, mantissa_bits);
}

/// The element value of an MX code (inverse of mx_element_code).
MOPT_HOST_DEVICE float mx_element_value(uint32_t code, int exponent_bits, int mantissa_bits) {
  if (exponent_bits == 0) return static_cast<float>(static_cast<int8_t>(code & 0xffu));
  return minifloat_decode(code, exponent_bits, mantissa_bits);
}

/// Value of an MX code with E8M0 scale code `scale_code`: MxBlock's result.
MOPT_HOST_DEVICE float mx_value(uint32_t code, uint32_t scale_code, int exponent_bits,
                                int mantissa_bits) {
  return mx_element_value(code, exponent_bits, mantissa_bits) *
         block_quant::exp2_int(static_cast<int>(scale_code) - 127);
}

// ---------------------------------------------------------------------------------------------
// NF4

/// The NormalFloat4 table in code order (the literals of block_quant::nf4_round).
MOPT_HOST_DEVICE float nf4_table(uint32_t code) {
  switch (code & 0xfu) {
    case 0: return -1.0f;
    case 1: return -0.6962f;
    case 2: return -0.5251f;
    case 3: return -0.3949f;
    case 4: return -0.2844f;
    case 5: return -0.1848f;
    case 6: return -0.0911f;
    case 7: return 0.0f;
    case 8: return 0.0796f;
    case 9: return 0.1609f;
    case 10: return 0.2461f;
    case 11: return 0.3379f;
    case 12: return 0.4407f;
    case 13: return 0.5626f;
    case 14: return 0.7230f;
    default: return 1.0f;
  }
}

/// Table index of x in a block with divisor d (nf4_round(x / d) found in the table).
MOPT_HOST_DEVICE uint32_t nf4_code(float x, float divisor) {
  const float q = block_quant::nf4_round(x / divisor);
  uint32_t code = 0;
  for (uint32_t c = 1; c < 16; ++c) code = nf4_table(c) == q ? c : code;
  return code;
}

/// Value of an NF4 code with block scale `scale`: Nf4Block's result.
MOPT_HOST_DEVICE float nf4_value(uint32_t code, float scale) { return nf4_table(code) * scale; }

// ---------------------------------------------------------------------------------------------
// Storage

/// Code of element `col` of a row whose codes are stored with `bits` bits (4: two per byte, the
/// even column in the low nibble; 8: one per byte).
MOPT_HOST_DEVICE uint32_t load_code(const uint8_t* row, int64_t col, int bits) {
  if (bits == 8) return row[col];
  return (row[col >> 1] >> ((col & 1) * 4)) & 0xfu;
}

/// Bytes one row of `row_len` codes of `bits` bits takes.
MOPT_HOST_DEVICE int64_t row_bytes(int64_t row_len, int bits) {
  return bits == 8 ? row_len : (row_len + 1) / 2;
}

/// Index of the scale of element (row, col): its block with block_size > 0 (blocks_per_row
/// blocks per row), else its entry of `layout` over the [rows, row_len] flattening.
MOPT_HOST_DEVICE int64_t scale_index(const ReduceLayout& layout, int64_t block_size,
                                     int64_t blocks_per_row, int64_t row, int64_t row_len,
                                     int64_t col) {
  if (block_size > 0) return row * blocks_per_row + col / block_size;
  return layout.offset(row * row_len + col);
}

/// Sign-extends a `bits`-bit two's complement pattern.
MOPT_HOST_DEVICE int32_t sign_extend(uint32_t code, int bits) {
  const uint32_t m = 1u << (bits - 1);
  return static_cast<int32_t>((code ^ m) - m);
}

}  // namespace mopt::kernels::pack
