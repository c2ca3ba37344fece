// Element types the kernels read and write, and their exact conversions to and from fp32.
// The conversions are integer bit manipulation, identical on host and device, so a CPU kernel
// and its CUDA twin store bit-identical results (round to nearest even, NaN stays NaN).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace mopt::kernels {

/// Storage type of a tensor handed to a kernel; math is always fp32.
enum class DType { kFloat32, kFloat16, kBFloat16 };

/// IEEE binary16 storage.
struct Half {
  uint16_t bits;
};
/// bfloat16 storage.
struct BFloat16 {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit storage types must be packed");

MOPT_HOST_DEVICE uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

MOPT_HOST_DEVICE float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

/// fp32 -> binary16 bits, round to nearest even; overflow gives inf, NaN gives a quiet NaN.
MOPT_HOST_DEVICE uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a >= 0x38800000u) {                                              // normal binary16
    const uint32_t m = a - 0x38000000u;                                // rebias exponent 127 -> 15
    return static_cast<uint16_t>(sign | ((m + 0x0fffu + ((m >> 13) & 1u)) >> 13));
  }
  if (a <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25 ties to even zero
  const uint32_t e = a >> 23;
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // units of 2^-24
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  q += (rem > half || (rem == half && (q & 1u))) ? 1u : 0u;
  return static_cast<uint16_t>(sign | q);
}

/// binary16 bits -> fp32 (exact).
MOPT_HOST_DEVICE float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return bits_to_float(float_to_bits(v) | sign);
  }
  if (e == 31) return bits_to_float(sign | 0x7f800000u | (m << 13));
  return bits_to_float(sign | ((e + 112u) << 23) | (m << 13));
}

/// fp32 -> bfloat16 bits, round to nearest even; NaN gives a quiet NaN.
MOPT_HOST_DEVICE uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// bfloat16 bits -> fp32 (exact).
MOPT_HOST_DEVICE float bfloat16_bits_to_float(uint16_t b) {
  return bits_to_float(static_cast<uint32_t>(b) << 16);
}

MOPT_HOST_DEVICE float load_float(const float* p) { return *p; }
MOPT_HOST_DEVICE float load_float(const Half* p) { return half_bits_to_float(p->bits); }
MOPT_HOST_DEVICE float load_float(const BFloat16* p) { return bfloat16_bits_to_float(p->bits); }

MOPT_HOST_DEVICE void store_float(float* p, float v) { *p = v; }
MOPT_HOST_DEVICE void store_float(Half* p, float v) { p->bits = float_to_half_bits(v); }
MOPT_HOST_DEVICE void store_float(BFloat16* p, float v) { p->bits = float_to_bfloat16_bits(v); }

/// Rounds v to the storage precision of T and back (what a store then a load would give).
template <typename T>
MOPT_HOST_DEVICE float round_to_storage(float v) {
  T t;
  store_float(&t, v);
  return load_float(&t);
}

/// Size in bytes of one element of `dtype`.
inline int dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

}  // namespace mopt::kernels

/// Runs the trailing statements with `T` bound to the storage type of `dtype`.
#define MOPT_DTYPE_SWITCH(dtype, T, ...)                                     \
  [&] {                                                                      \
    switch (dtype) {                                                         \
      case ::mopt::kernels::DType::kFloat32: {                               \
        using T = float;                                                     \
        return __VA_ARGS__();                                                \
      }                                                                      \
      case ::mopt::kernels::DType::kFloat16: {                               \
        using T = ::mopt::kernels::Half;                                     \
        return __VA_ARGS__();                                                \
      }                                                                      \
      case ::mopt::kernels::DType::kBFloat16: {                              \
        using T = ::mopt::kernels::BFloat16;                                 \
        return __VA_ARGS__();                                                \
      }                                                                      \
    }                                                                        \
    MOPT_CHECK(false, "unknown kernel dtype ", static_cast<int>(dtype));     \
  }()
