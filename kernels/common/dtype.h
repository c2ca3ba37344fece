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

// The conversions below compute every case and pick one with selects instead of returning early:
// the compiler turns a loop over them into SIMD code (a branch per element blocks that), and the
// bits are the same as the case-by-case form.

/// cond ? a : b as mask arithmetic. A chain of ?: selects can merge into one many-way choice that
/// GCC no longer if-converts (and then does not vectorize the loop); masks stay straight-line.
MOPT_HOST_DEVICE uint32_t select_bits(bool cond, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);
  return (a & mask) | (b & ~mask);
}

/// fp32 -> binary16 bits, round to nearest even; overflow gives inf, NaN gives a quiet NaN.
MOPT_HOST_DEVICE uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t a = u & 0x7fffffffu;
  // Normal binary16: rebias the exponent (127 -> 15) and round the 13 dropped bits to even; a
  // carry out of the mantissa correctly bumps the exponent, up to inf for >= 65520.
  const uint32_t m = a - 0x38000000u;
  const uint32_t normal = (m + 0x0fffu + ((m >> 13) & 1u)) >> 13;
  // Subnormal binary16 (|f| < 2^-14): adding 0.5 moves f into the binade [0.5, 1) whose spacing
  // is 2^-24, the binary16 subnormal step, so the FPU's round-to-nearest-even leaves the result
  // in units of 2^-24 in the low mantissa bits (ties to even, <= 2^-25 gives 0).
  const uint32_t subnormal = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000u;
  uint32_t h = select_bits(a < 0x38800000u, subnormal, normal);
  h = select_bits(a >= 0x477ff000u, 0x7c00u, h);  // >= 65520 rounds to inf (inf itself too)
  h = select_bits(a > 0x7f800000u, 0x7e00u, h);   // NaN
  // Assembled in the high half and shifted down: GCC then keeps the selects in 32-bit lanes and
  // narrows once, instead of narrowing each operand with its own 16-bit shuffles.
  return static_cast<uint16_t>(((u & 0x80000000u) | (h << 16)) >> 16);
}

/// binary16 bits -> fp32 (exact).
MOPT_HOST_DEVICE float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent and mantissa in place
  const uint32_t e = em & 0x0f800000u;
  const uint32_t normal = em + 0x38000000u;   // rebias 15 -> 127
  const uint32_t special = em | 0x7f800000u;  // inf / NaN, payload kept
  // Subnormal m * 2^-24: the mantissa placed under exponent 2^-14 is 2^-14 + m * 2^-24 exactly;
  // subtracting 2^-14 leaves the value (exact, Sterbenz).
  const uint32_t subnormal =
      float_to_bits(bits_to_float(em + 0x38800000u) - 6.103515625e-05f);  // 2^-14
  uint32_t r = e == 0 ? subnormal : normal;
  r = e == 0x0f800000u ? special : r;
  return bits_to_float(sign | r);
}

/// fp32 -> bfloat16 bits, round to nearest even; NaN gives a quiet NaN (truncated payload).
MOPT_HOST_DEVICE uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t u = float_to_bits(f);
  // One expression narrowed once at the end (GCC vectorizes that without 16-bit shuffles): a NaN
  // gets its quiet bit and no rounding increment, anything else the round-to-even increment.
  const uint32_t nan_mask = 0u - static_cast<uint32_t>((u & 0x7fffffffu) > 0x7f800000u);
  const uint32_t increment = (0x7fffu + ((u >> 16) & 1u)) & ~nan_mask;
  return static_cast<uint16_t>(((u | (nan_mask & 0x00400000u)) + increment) >> 16);
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
#define MOPT_DTYPE_SWITCH(dtype, T, ...)                                 \
  [&] {                                                                  \
    switch (dtype) {                                                     \
      case ::mopt::kernels::DType::kFloat32: {                           \
        using T = float;                                                 \
        return __VA_ARGS__();                                            \
      }                                                                  \
      case ::mopt::kernels::DType::kFloat16: {                           \
        using T = ::mopt::kernels::Half;                                 \
        return __VA_ARGS__();                                            \
      }                                                                  \
      case ::mopt::kernels::DType::kBFloat16: {                          \
        using T = ::mopt::kernels::BFloat16;                             \
        return __VA_ARGS__();                                            \
      }                                                                  \
    }                                                                    \
    MOPT_CHECK(false, "unknown kernel dtype ", static_cast<int>(dtype)); \
  }()
