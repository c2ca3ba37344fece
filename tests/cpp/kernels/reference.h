// Naive float64 references for the kernel tests. Nothing here includes kernel headers: each
// reference is written from the SPEC's formulas, independently of the kernels' math.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace mopt::test {

/// Integer fake quant of one value per SPEC §5: scale = maxbound / amax in fp32,
/// y = clamp(round_half_even(x * scale), minbound, maxbound) / scale.
inline double ref_fake_quant_int(float x, float amax, int bits, bool is_unsigned, bool narrow,
                                 bool full_range = false) {
  const double maxbound = std::ldexp(1.0, bits - 1 + (is_unsigned ? 1 : 0)) - 1.0;
  const double minbound = is_unsigned ? 0.0 : (narrow ? -maxbound : -maxbound - 1.0);
  if (amax <= std::ldexp(1.0f, -24)) return 0.0;
  // full range: amax maps to half a step above the largest code, 2^(b-1) - 1/2
  const double mapped = full_range ? std::ldexp(1.0, bits - 1) - 0.5 : maxbound;
  const float scale = static_cast<float>(mapped) / amax;
  const float prod = x * scale;
  if (std::isnan(prod)) return std::numeric_limits<double>::quiet_NaN();
  double q = std::nearbyint(static_cast<double>(prod));  // default rounding: half to even
  q = std::min(std::max(q, minbound), maxbound);
  return static_cast<double>(static_cast<float>(q) / scale);
}

/// All non-negative finite values of a sign/exponent/mantissa minifloat, ascending, by
/// enumerating its codes (E4M3 drops the all-ones NaN code, E5M2 the IEEE inf/NaN exponent).
inline std::vector<double> minifloat_values(int e_bits, int m_bits) {
  const int bias = (1 << (e_bits - 1)) - 1;
  std::vector<double> values;
  for (int e = 0; e < (1 << e_bits); ++e) {
    if (e_bits == 5 && e == (1 << e_bits) - 1) continue;
    for (int m = 0; m < (1 << m_bits); ++m) {
      if (e_bits == 4 && m_bits == 3 && e == 15 && m == 7) continue;
      const double frac = static_cast<double>(m) / (1 << m_bits);
      values.push_back(e == 0 ? std::ldexp(frac, 1 - bias) : std::ldexp(1.0 + frac, e - bias));
    }
  }
  return values;  // codes ascend with value
}

/// Nearest table value to |v| (ties to the even code), saturating, sign restored.
inline double ref_round_minifloat(double v, const std::vector<double>& table) {
  if (std::isnan(v)) return v;
  const double a = std::fabs(v);
  double best = table.back();
  if (a < table.back()) {
    for (size_t i = 0; i + 1 < table.size(); ++i) {
      if (a >= table[i] && a <= table[i + 1]) {
        const double d0 = a - table[i], d1 = table[i + 1] - a;
        if (d0 < d1) best = table[i];
        else if (d1 < d0) best = table[i + 1];
        else best = (i % 2 == 0) ? table[i] : table[i + 1];
        break;
      }
    }
  }
  return std::copysign(best, v);
}

/// Scaled minifloat fake quant per SPEC: y = round(x * (max / amax)) / (max / amax).
inline double ref_fake_quant_minifloat(float x, const float* amax, const std::vector<double>& table) {
  if (amax == nullptr) return ref_round_minifloat(x, table);
  if (*amax <= std::ldexp(1.0f, -24)) return 0.0;
  const float scale = static_cast<float>(table.back()) / *amax;
  const float q = static_cast<float>(ref_round_minifloat(static_cast<double>(x * scale), table));
  return static_cast<double>(q / scale);
}

/// Rounds v to a binary float with `mant_bits` stored mantissa bits and smallest normal exponent
/// `min_exp` (ties to even, subnormals kept): fp16 is (10, -14), bf16 is (7, -126).
inline double ref_round_significand(double v, int mant_bits, int min_exp) {
  if (v == 0.0 || std::isnan(v) || std::isinf(v)) return v;
  int ex = 0;
  std::frexp(std::fabs(v), &ex);
  const int e = std::max(ex - 1, min_exp);
  const double q = std::nearbyint(std::ldexp(std::fabs(v), mant_bits - e));
  return std::copysign(std::ldexp(q, e - mant_bits), v);
}

/// Seeded normal samples with a few large outliers.
inline std::vector<float> random_values(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  for (size_t i = 0; i < n; i += 97) v[i] *= 8.0f;
  return v;
}

}  // namespace mopt::test
