// Naive references of the block formats (SPEC §5), written from the formulas and sharing no code
// with kernels/block_quant. Scale arithmetic that the SPEC fixes in fp32 is done with float
// operations; every rounding to a format goes through an enumerated table in float64.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "reference.h"

namespace mopt::test {

inline bool ref_amax_usable(double a) { return a > 0.0 && std::isfinite(a); }

/// max |x| of a block, NaN if any element is NaN.
inline double ref_block_amax(const float* x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return std::numeric_limits<double>::quiet_NaN();
    m = std::max(m, std::fabs(static_cast<double>(x[i])));
  }
  return m;
}

/// NVFP4 of one block: s2 = amax / (6 * 448), s1 = e4m3(min(bamax / (6 * s2), 448)) * s2,
/// y = sign(x) * e2m1(|x| / s1) * s1; scale 1 for an unusable amax, 0 output for a zero s1.
inline std::vector<double> ref_nvfp4_block(const float* x, int64_t n, float global_amax,
                                           double block_amax) {
  static const std::vector<double> e2m1 = minifloat_values(2, 1);
  static const std::vector<double> e4m3 = minifloat_values(4, 3);
  const float s2 = ref_amax_usable(global_amax) ? global_amax / 2688.0f : 0.0f;
  float s1 = 1.0f;
  if (s2 > 0.0f && ref_amax_usable(block_amax)) {
    float r = static_cast<float>(block_amax) / (6.0f * s2);
    r = std::min(r, 448.0f);
    s1 = static_cast<float>(ref_round_minifloat(r, e4m3)) * s2;
  }
  std::vector<double> y(n);
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) {
      y[i] = x[i];
    } else if (s1 == 0.0f) {
      y[i] = 0.0;
    } else {
      const float a = std::fabs(x[i]) / s1;
      const float q = static_cast<float>(ref_round_minifloat(a, e2m1)) * s1;
      y[i] = std::copysign(static_cast<double>(q), static_cast<double>(x[i]));
    }
  }
  return y;
}

/// All non-negative values of an MX element format: minifloat codes, or 0..2^M-1 for E = 0.
inline std::vector<double> ref_mx_values(int e_bits, int m_bits) {
  if (e_bits > 0) return minifloat_values(e_bits, m_bits);
  std::vector<double> v;
  for (int i = 0; i < (1 << m_bits); ++i) v.push_back(i);
  return v;
}

/// Integer round half to even, saturating at +-max.
inline double ref_round_int(double v, double max) {
  if (std::isnan(v)) return v;
  return std::nearbyint(std::clamp(v, -max, max));
}

/// MX of one block: k = ceil(log2(bamax / elem_max)) found exactly by search, clamped to
/// [-127, 127]; y = round(x / 2^k) * 2^k. Scale 1 for a zero block amax, a NaN block for an
/// infinite or NaN one.
inline std::vector<double> ref_mx_block(const float* x, int64_t n, int e_bits, int m_bits,
                                        double block_amax) {
  if (std::isnan(block_amax) || std::isinf(block_amax)) {
    return std::vector<double>(n, std::numeric_limits<double>::quiet_NaN());
  }
  const std::vector<double> values = ref_mx_values(e_bits, m_bits);
  const double emax = values.back();
  int k = 0;
  if (ref_amax_usable(block_amax)) {
    k = static_cast<int>(std::ceil(std::log2(block_amax / emax)));
    while (std::ldexp(emax, k) < block_amax) ++k;
    while (std::ldexp(emax, k - 1) >= block_amax) --k;
    k = std::clamp(k, -127, 127);
  }
  std::vector<double> y(n);
  for (int64_t i = 0; i < n; ++i) {
    const double v = std::ldexp(static_cast<double>(x[i]), -k);
    const double q = e_bits > 0 ? ref_round_minifloat(v, values) : ref_round_int(v, emax);
    y[i] = std::ldexp(q, k);
  }
  return y;
}

/// The NF4 table of SPEC §5.
inline const std::vector<double>& ref_nf4_table() {
  static const std::vector<double> t = {-1.0,    -0.6962, -0.5251, -0.3949, -0.2844, -0.1848,
                                        -0.0911, 0.0,     0.0796,  0.1609,  0.2461,  0.3379,
                                        0.4407,  0.5626,  0.7230,  1.0};
  return t;
}

/// Index of the NF4 entry nearest to v (the first one on a tie); `ambiguous` is set when v lies
/// within one fp32 ulp of a midpoint, where fp32 and float64 midpoints may disagree.
inline int ref_nf4_index(double v, bool* ambiguous) {
  const auto& t = ref_nf4_table();
  int best = 0;
  double best_d = std::fabs(v - static_cast<float>(t[0]));
  for (int i = 1; i < 16; ++i) {
    const double d = std::fabs(v - static_cast<float>(t[i]));
    if (d < best_d) {
      best_d = d;
      best = i;
    }
  }
  if (ambiguous != nullptr) {
    *ambiguous = false;
    for (int i = 0; i + 1 < 16; ++i) {
      const double mid =
          0.5 * (static_cast<double>(static_cast<float>(t[i])) + static_cast<float>(t[i + 1]));
      if (std::fabs(v - mid) <= std::ldexp(1.0, -23)) *ambiguous = true;
    }
  }
  return best;
}

/// Double-quantized NF4 scales: int8 around the mean of all scales, one fp32 scale per group of
/// `group` consecutive scales; s' = q / (127 / dq_amax) + mean, clamped at 0.
inline std::vector<float> ref_nf4_double_quant(const std::vector<double>& scales, int64_t group) {
  const int64_t n = static_cast<int64_t>(scales.size());
  double total = 0.0;
  for (double s : scales) total += s;
  const float mean = static_cast<float>(total / static_cast<double>(n));
  std::vector<float> out(n);
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    const int64_t g1 = std::min(n, g0 + group);
    float dq_amax = 0.0f;
    for (int64_t i = g0; i < g1; ++i) {
      dq_amax = std::max(dq_amax, std::fabs(static_cast<float>(scales[i]) - mean));
    }
    for (int64_t i = g0; i < g1; ++i) {
      if (dq_amax == 0.0f) {
        out[i] = std::max(mean, 0.0f);
        continue;
      }
      const float dq_scale = 127.0f / dq_amax;
      const float c = (static_cast<float>(scales[i]) - mean) * dq_scale;
      const float q = static_cast<float>(ref_round_int(c, 127.0));
      out[i] = std::max(q / dq_scale + mean, 0.0f);
    }
  }
  return out;
}

}  // namespace mopt::test
