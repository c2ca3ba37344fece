// Per-block math of llama.cpp's GGUF block types Q8_0, Q4_0, Q5_0 and Q4_K: the byte layout of
// one block, how mopt chooses its scales (quantize) and the value llama.cpp computes from those
// bytes (dequantize, ggml's DEQUANTIZE formulas). Fake quantization is quantize-then-dequantize
// of the same bytes, so the fake-quantized value is exactly the value llama.cpp reads, fp16
// rounding of the scales included. Shared verbatim by the CPU loops and the CUDA kernels.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/macros.h"
#include "fake_quant/fake_quant_math.h"

namespace mopt::kernels::gguf {

/// GGUF tensor types mopt writes; the values are ggml's type ids (ggml_type), as stored in a
/// GGUF file. kF32 marks a tensor left unquantized.
enum class GgufType : int {
  kF32 = 0,
  kQ4_0 = 2,
  kQ5_0 = 6,
  kQ8_0 = 8,
  kQ4_K = 12,
};

constexpr int kQK = 32;      // elements of a Q8_0 / Q4_0 / Q5_0 block
constexpr int kQKK = 256;    // elements of a Q4_K super-block
constexpr int kQ4KSub = 32;  // elements of a Q4_K sub-block (8 per super-block)

// Block layouts (ggml-common.h): fp16 scale(s) first, then the codes. Sizes in bytes.
constexpr int kQ8_0Bytes = 2 + kQK;                 // d, int8 qs[32]
constexpr int kQ4_0Bytes = 2 + kQK / 2;             // d, qs[16]: low nibbles = elements 0..15
constexpr int kQ5_0Bytes = 2 + 4 + kQK / 2;         // d, qh (bit 4 of each element), qs[16]
constexpr int kQ4_KBytes = 2 + 2 + 12 + kQKK / 2;   // d, dmin, 6-bit scales/mins[12], qs[128]
static_assert(kQ8_0Bytes == 34 && kQ4_0Bytes == 18 && kQ5_0Bytes == 22 && kQ4_KBytes == 144,
              "GGUF block sizes of ggml-common.h");

/// Elements of one block of `t` (1 for kF32).
MOPT_HOST_DEVICE int block_elements(GgufType t) {
  return t == GgufType::kQ4_K ? kQKK : t == GgufType::kF32 ? 1 : kQK;
}

/// Bytes of one block of `t` (4 for kF32).
MOPT_HOST_DEVICE int block_bytes(GgufType t) {
  switch (t) {
    case GgufType::kQ8_0: return kQ8_0Bytes;
    case GgufType::kQ4_0: return kQ4_0Bytes;
    case GgufType::kQ5_0: return kQ5_0Bytes;
    case GgufType::kQ4_K: return kQ4_KBytes;
    default: return 4;
  }
}

MOPT_HOST_DEVICE void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}

MOPT_HOST_DEVICE uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

/// fp32 -> fp16 (round to nearest even) -> fp32: the scale llama.cpp reads.
MOPT_HOST_DEVICE float fp16_value(float v) { return half_bits_to_float(float_to_half_bits(v)); }

/// Round half away from zero (C roundf) of |v| < 2^31; NaN gives 0.
MOPT_HOST_DEVICE float round_away(float v) {
  if (!(v == v)) return 0.0f;
  const float a = v < 0.0f ? -v : v;
  float r = static_cast<float>(static_cast<int32_t>(a));  // floor of a >= 0, exact
  r = a - r >= 0.5f ? r + 1.0f : r;                        // a - r is exact
  return v < 0.0f ? -r : r;
}

// ---------------------------------------------------------------------------------------------
// Q8_0: y = d * q, q int8; d = max|x| / 127 (fp16), q = round(x / d) with the unrounded d.

MOPT_HOST_DEVICE void quantize_q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int i = 0; i < kQK; ++i) {
    const float a = x[i] < 0.0f ? -x[i] : x[i];
    amax = a > amax ? a : amax;
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(out, float_to_half_bits(d));
  for (int i = 0; i < kQK; ++i) {
    float q = round_away(x[i] * id);
    q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
    out[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
  }
}

MOPT_HOST_DEVICE void dequantize_q8_0(const uint8_t* in, float* y) {
  const float d = half_bits_to_float(load_u16(in));
  for (int i = 0; i < kQK; ++i) y[i] = static_cast<float>(static_cast<int8_t>(in[2 + i])) * d;
}

// ---------------------------------------------------------------------------------------------
// Q4_0 / Q5_0: y = d * (q - 2^(b-1)), q in [0, 2^b - 1]; d = m / -2^(b-1) with m the signed
// element of largest magnitude (the first one on ties), so m itself is exactly representable.

/// Signed element of largest magnitude (first on ties).
MOPT_HOST_DEVICE float signed_absmax(const float* x, int n) {
  float amax = 0.0f, m = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float a = x[i] < 0.0f ? -x[i] : x[i];
    if (a > amax) {
      amax = a;
      m = x[i];
    }
  }
  return m;
}

/// Codes q = min(qmax, trunc(x / d + offset + 0.5)) of a Q4_0 / Q5_0 block, d from signed_absmax.
MOPT_HOST_DEVICE float qx_0_scale(const float* x, float half_range) {
  return signed_absmax(x, kQK) / -half_range;
}

MOPT_HOST_DEVICE int qx_0_code(float x, float id, float half_range) {
  float v = x * id + (half_range + 0.5f);
  v = v < 0.0f ? 0.0f : v;  // a NaN input gives code 0 (NaN fails the comparisons below too)
  int q = v == v ? static_cast<int>(v) : 0;
  const int qmax = static_cast<int>(2.0f * half_range) - 1;
  return q > qmax ? qmax : q;
}

MOPT_HOST_DEVICE void quantize_q4_0(const float* x, uint8_t* out) {
  const float d = qx_0_scale(x, 8.0f);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(out, float_to_half_bits(d));
  for (int i = 0; i < kQK / 2; ++i) {
    const int lo = qx_0_code(x[i], id, 8.0f), hi = qx_0_code(x[i + kQK / 2], id, 8.0f);
    out[2 + i] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

MOPT_HOST_DEVICE void dequantize_q4_0(const uint8_t* in, float* y) {
  const float d = half_bits_to_float(load_u16(in));
  for (int i = 0; i < kQK / 2; ++i) {
    y[i] = static_cast<float>((in[2 + i] & 0x0f) - 8) * d;
    y[i + kQK / 2] = static_cast<float>((in[2 + i] >> 4) - 8) * d;
  }
}

MOPT_HOST_DEVICE void quantize_q5_0(const float* x, uint8_t* out) {
  const float d = qx_0_scale(x, 16.0f);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(out, float_to_half_bits(d));
  uint32_t qh = 0;
  for (int i = 0; i < kQK / 2; ++i) {
    const int lo = qx_0_code(x[i], id, 16.0f), hi = qx_0_code(x[i + kQK / 2], id, 16.0f);
    out[6 + i] = static_cast<uint8_t>((lo & 0x0f) | ((hi & 0x0f) << 4));
    qh |= static_cast<uint32_t>((lo >> 4) & 1) << i;
    qh |= static_cast<uint32_t>((hi >> 4) & 1) << (i + kQK / 2);
  }
  for (int k = 0; k < 4; ++k) out[2 + k] = static_cast<uint8_t>(qh >> (8 * k));
}

MOPT_HOST_DEVICE void dequantize_q5_0(const uint8_t* in, float* y) {
  const float d = half_bits_to_float(load_u16(in));
  const uint32_t qh = static_cast<uint32_t>(in[2]) | (static_cast<uint32_t>(in[3]) << 8) |
                      (static_cast<uint32_t>(in[4]) << 16) | (static_cast<uint32_t>(in[5]) << 24);
  for (int i = 0; i < kQK / 2; ++i) {
    const int lo = (in[6 + i] & 0x0f) | static_cast<int>(((qh >> i) & 1) << 4);
    const int hi = (in[6 + i] >> 4) | static_cast<int>(((qh >> (i + kQK / 2)) & 1) << 4);
    y[i] = static_cast<float>(lo - 16) * d;
    y[i + kQK / 2] = static_cast<float>(hi - 16) * d;
  }
}

// ---------------------------------------------------------------------------------------------
// Q4_K: 8 sub-blocks of 32 with y = d * sc_j * q - dmin * m_j, q in [0, 15], sc_j and m_j 6-bit
// codes packed in 12 bytes, d and dmin fp16. mopt's scale choice: each sub-block's range
// [min(0, min x), max x] over 15 steps, its scale and offset coded in 6 bits against the
// largest of the super-block; the codes are then rounded against the scales llama.cpp reads.

/// 6-bit scale and min codes of sub-block j from the 12 packed bytes (ggml's get_scale_min_k4).
MOPT_HOST_DEVICE void q4_k_scale_min(int j, const uint8_t* s, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

MOPT_HOST_DEVICE int clamp_code(float v, int hi) {
  const float r = fake_quant::round_half_even(v);
  const int q = r == r ? static_cast<int>(r < 0.0f ? 0.0f : r > hi ? hi : r) : 0;
  return q;
}

MOPT_HOST_DEVICE void quantize_q4_k(const float* x, uint8_t* out) {
  float scales[kQKK / kQ4KSub], mins[kQKK / kQ4KSub];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < kQKK / kQ4KSub; ++j) {
    float lo = 0.0f, hi = 0.0f;
    for (int i = 0; i < kQ4KSub; ++i) {
      const float v = x[j * kQ4KSub + i];
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    scales[j] = (hi - lo) / 15.0f;
    mins[j] = -lo;
    max_scale = scales[j] > max_scale ? scales[j] : max_scale;
    max_min = mins[j] > max_min ? mins[j] : max_min;
  }
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  uint8_t* s = out + 4;
  for (int k = 0; k < 12; ++k) s[k] = 0;
  for (int j = 0; j < kQKK / kQ4KSub; ++j) {
    const int ls = clamp_code(inv_scale * scales[j], 63);
    const int lm = clamp_code(inv_min * mins[j], 63);
    if (j < 4) {
      s[j] = static_cast<uint8_t>(ls);
      s[j + 4] = static_cast<uint8_t>(lm);
    } else {
      s[j + 4] = static_cast<uint8_t>((ls & 0x0f) | ((lm & 0x0f) << 4));
      s[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      s[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  store_u16(out, float_to_half_bits(max_scale / 63.0f));
  store_u16(out + 2, float_to_half_bits(max_min / 63.0f));
  const float d = half_bits_to_float(load_u16(out));
  const float dmin = half_bits_to_float(load_u16(out + 2));
  uint8_t* qs = out + 16;
  for (int j = 0; j < kQKK / kQ4KSub; ++j) {
    int sc = 0, m = 0;
    q4_k_scale_min(j, s, &sc, &m);
    const float dj = d * static_cast<float>(sc);
    const float mj = dmin * static_cast<float>(m);
    // Sub-blocks 2k and 2k+1 share bytes 32k..32k+31: low nibble from 2k, high from 2k+1.
    uint8_t* q = qs + (j / 2) * kQ4KSub;
    for (int i = 0; i < kQ4KSub; ++i) {
      const int code = dj != 0.0f ? clamp_code((x[j * kQ4KSub + i] + mj) / dj, 15) : 0;
      if (j % 2 == 0) {
        q[i] = static_cast<uint8_t>(code);
      } else {
        q[i] = static_cast<uint8_t>(q[i] | (code << 4));
      }
    }
  }
}

MOPT_HOST_DEVICE void dequantize_q4_k(const uint8_t* in, float* y) {
  const float d = half_bits_to_float(load_u16(in));
  const float dmin = half_bits_to_float(load_u16(in + 2));
  const uint8_t* s = in + 4;
  const uint8_t* qs = in + 16;
  for (int j = 0; j < kQKK / kQ4KSub; ++j) {
    int sc = 0, m = 0;
    q4_k_scale_min(j, s, &sc, &m);
    const float dj = d * static_cast<float>(sc);
    const float mj = dmin * static_cast<float>(m);
    const uint8_t* q = qs + (j / 2) * kQ4KSub;
    for (int i = 0; i < kQ4KSub; ++i) {
      const int code = j % 2 == 0 ? (q[i] & 0x0f) : (q[i] >> 4);
      const float prod = dj * static_cast<float>(code);
      y[j * kQ4KSub + i] = prod - mj;
    }
  }
}

// ---------------------------------------------------------------------------------------------

/// Quantizes one block of `t` (block_elements(t) values) into block_bytes(t) bytes.
MOPT_HOST_DEVICE void quantize_block(GgufType t, const float* x, uint8_t* out) {
  switch (t) {
    case GgufType::kQ8_0: quantize_q8_0(x, out); break;
    case GgufType::kQ4_0: quantize_q4_0(x, out); break;
    case GgufType::kQ5_0: quantize_q5_0(x, out); break;
    case GgufType::kQ4_K: quantize_q4_k(x, out); break;
    default: break;
  }
}

/// The values llama.cpp reads from one block of `t`.
MOPT_HOST_DEVICE void dequantize_block(GgufType t, const uint8_t* in, float* y) {
  switch (t) {
    case GgufType::kQ8_0: dequantize_q8_0(in, y); break;
    case GgufType::kQ4_0: dequantize_q4_0(in, y); break;
    case GgufType::kQ5_0: dequantize_q5_0(in, y); break;
    case GgufType::kQ4_K: dequantize_q4_k(in, y); break;
    default: break;
  }
}

}  // namespace mopt::kernels::gguf
