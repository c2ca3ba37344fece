// Per-element math of the GPTQ column loop, shared by the CPU loop and the CUDA kernel. Rounding
// is the weight quantizer's own: fake_quant_math.h for integer and minifloat elements,
// block_quant_math.h for NVFP4, so a GPTQ weight is what the quantizer itself would produce.
#pragma once

#include <cstdint>

#include "block_quant/block_quant_math.h"
#include "common/macros.h"
#include "fake_quant/fake_quant_math.h"
#include "gptq/gptq.h"
#include "sparsity/sparsity_math.h"

namespace mopt::kernels::gptq {

/// The element quantizer of a QuantSpec with its constants resolved.
struct ElementQuant {
  Format format;
  fake_quant::IntQuant int_q;
  fake_quant::MinifloatQuant float_q;
  float tensor_scale;  // NVFP4 s2
  bool asymmetric;     // kInt with zero points
  int num_bits;        // kInt

  /// Group parameter from the group's amax: the amax itself (the quantizer stores it), or the
  /// NVFP4 block scale s1 (0 for an all-zero group).
  MOPT_HOST_DEVICE float param_from_amax(float amax) const {
    if (format != Format::kNVFP4) return amax;
    return amax > 0.0f ? block_quant::nvfp4_block_scale(amax, tensor_scale) : 0.0f;
  }

  /// Quantizes x with its group's parameter (and zero point: 0 for symmetric formats, for which
  /// adding and removing it is exact) exactly as the weight quantizer does.
  MOPT_HOST_DEVICE float operator()(float x, float param, float zero = 0.0f) const {
    switch (format) {
      case Format::kInt:
        return fake_quant::apply_scaled_zp(
            int_q, x, fake_quant::scale_from_amax(param, int_q.max_value()), zero);
      case Format::kMinifloat:
        return fake_quant::apply_scaled(float_q, x,
                                        fake_quant::scale_from_amax(param, float_q.max_value()));
      case Format::kNVFP4:
      default:
        return block_quant::Nvfp4Block{param}(x);
    }
  }

  /// NVFP4: true when x rounds to the largest E2M1 code (6) of its block.
  MOPT_HOST_DEVICE bool reaches_top_code(float x, float s1) const {
    return s1 != 0.0f && block_quant::round_e2m1_magnitude(bits_to_float(block_quant::abs_bits(x)) /
                                                           s1) == block_quant::kE2M1Max;
  }

  /// NVFP4: the largest code with the sign of x (what Nvfp4Block gives for a value that rounds
  /// to it, bit for bit).
  MOPT_HOST_DEVICE float top_code(float x, float s1) const {
    return block_quant::with_sign_of(block_quant::kE2M1Max * s1, x);
  }
};

/// Resolves a QuantSpec (host side).
inline ElementQuant make_element_quant(const QuantSpec& s) {
  ElementQuant q{};
  q.format = s.format;
  // Only the constants of the spec's own format: the fields of the others need not be set (an
  // integer spec carries exponent_bits 0, for which the minifloat constants would shift by -1).
  if (s.format == Format::kInt) {
    q.int_q = fake_quant::make_int_quant(s.num_bits, false, s.narrow_range,
                                         s.full_range || s.asymmetric);
    q.asymmetric = s.asymmetric;
    q.num_bits = s.num_bits;
  } else if (s.format == Format::kMinifloat) {
    q.float_q = fake_quant::MinifloatQuant{
        s.mantissa_bits, fake_quant::minifloat_min_exponent(s.exponent_bits),
        fake_quant::minifloat_max(s.exponent_bits, s.mantissa_bits)};
  }
  q.tensor_scale = s.nvfp4_tensor_scale;
  return q;
}

/// max |v[i * stride]| over i in [0, n) and the first index reaching it (weights are finite).
struct GroupMax {
  float amax;
  int64_t argmax;
};

MOPT_HOST_DEVICE GroupMax group_max(const float* v, int64_t n, int64_t stride) {
  GroupMax m{0.0f, 0};
  for (int64_t i = 0; i < n; ++i) {
    const float a = bits_to_float(block_quant::abs_bits(v[i * stride]));
    if (a > m.amax) m = GroupMax{a, i};
  }
  return m;
}

/// Signed min and max of v[i * stride] over i in [0, n) (an asymmetric group's range).
struct GroupRange {
  float lo;
  float hi;
};

MOPT_HOST_DEVICE GroupRange group_range(const float* v, int64_t n, int64_t stride) {
  GroupRange r{0.0f, 0.0f};  // the range always holds 0 (int_asym_range widens it anyway)
  for (int64_t i = 0; i < n; ++i) {
    const float x = v[i * stride];
    r.lo = x < r.lo ? x : r.lo;
    r.hi = x > r.hi ? x : r.hi;
  }
  return r;
}

/// SparseGPT: keep mask of the group of m working columns starting at wr[0], whose inverse-
/// Hessian diagonal entries are hinv[t * (ldh + 1)], t in [0, m): the n weights with the largest
/// |w| / U_tt (the order of the OBS error w^2 / U_tt^2).
MOPT_HOST_DEVICE uint32_t prune_group_keep(const float* wr, const float* hinv_diag, int64_t ldh,
                                           int m, int n) {
  float score[sparsity::kMaxGroup];
  for (int t = 0; t < m; ++t) score[t] = sparsity::nm_score(wr[t], 1.0f) / hinv_diag[t * (ldh + 1)];
  return sparsity::nm_keep_bits(score, 1, m, n);
}

/// Smallest grain (rows per task) that gives a parallel task at least `min_work` operations.
MOPT_HOST_DEVICE int64_t rows_grain(int64_t work_per_row, int64_t min_work) {
  const int64_t w = work_per_row > 0 ? work_per_row : 1;
  const int64_t g = min_work / w;
  return g > 0 ? g : 1;
}

}  // namespace mopt::kernels::gptq
