// Per-group math of N:M sparsity, shared by the CPU loops and the CUDA kernels (SPEC §2): in each
// group of M consecutive weights along the input dimension keep the N with the largest score.
// Magnitude scores |w|, Wanda |w| * ||x_j||, SparseGPT |w| / [U]_jj (the same order as its OBS
// error w^2 / [U]_jj^2): every method is "|w| times a per-column factor", so one selection
// routine serves all three. Ties keep the lower index, so CPU and CUDA pick the same mask.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/dtype.h"
#include "common/macros.h"

namespace mopt::kernels::sparsity {

/// Largest group size M a mask of one group can describe (bits of the keep mask).
constexpr int kMaxGroup = 32;

/// Keep mask of one group of `m` scores score[i * stride], i in [0, m): bit i set for the `n`
/// largest scores, ties broken towards the lower index. Scores must not be NaN.
MOPT_HOST_DEVICE uint32_t nm_keep_bits(const float* score, int64_t stride, int m, int n) {
  uint32_t keep = 0;
  for (int i = 0; i < m; ++i) {
    const float si = score[i * stride];
    int rank = 0;  // scores that beat score i
    for (int j = 0; j < m; ++j) {
      const float sj = score[j * stride];
      rank += (sj > si) || (sj == si && j < i);
    }
    if (rank < n) keep |= (1u << i);
  }
  return keep;
}

/// Magnitude bits of a stored element: zero exactly for +0 and -0 (NaN counts as nonzero, as in
/// torch's `dense != 0`).
MOPT_HOST_DEVICE uint32_t magnitude_bits(float v) { return float_to_bits(v) & 0x7fffffffu; }
MOPT_HOST_DEVICE uint32_t magnitude_bits(Half v) { return v.bits & 0x7fffu; }
MOPT_HOST_DEVICE uint32_t magnitude_bits(BFloat16 v) { return v.bits & 0x7fffu; }

/// magnitude_bits of an fp32 value at or above this are Inf or NaN.
constexpr uint32_t kNonFiniteMagnitude = 0x7f800000u;
/// magnitude_bits of a stored T at or above this are Inf or NaN (all exponent bits set).
template <typename T>
constexpr uint32_t kNonFiniteMagnitudeOf = std::is_same_v<T, Half>       ? 0x7c00u
                                           : std::is_same_v<T, BFloat16> ? 0x7f80u
                                                                         : kNonFiniteMagnitude;

/// Score of weight w with column factor f (|w| * f); f = 1 for magnitude.
MOPT_HOST_DEVICE float nm_score(float w, float f) { return (w < 0.0f ? -w : w) * f; }

/// nm_score from the magnitude bits of w (magnitude_bits(w)). The same value as
/// nm_score(w, f); only the sign of a zero or NaN score can differ, which no comparison sees, so
/// both rank alike. Clearing the sign bit is one AND in a vector loop, where |w| by
/// compare-and-select costs two instructions more per element.
MOPT_HOST_DEVICE float nm_score_from_magnitude(uint32_t magnitude, float f) {
  return bits_to_float(magnitude) * f;
}

// ---------------------------------------------------------------------------------------------
// 2:4 compressed layout: the logical metadata that CUTLASS / cuSPARSELt start from, before their
// hardware-specific reordering (torch.sparse._semi_structured_conversions,
// sparse_semi_structured_from_dense_cutlass, for 16-bit dtypes, before
// _calculate_meta_reordering_scatter_offsets is applied).
//
// A dense [rows, cols] tensor with at most 2 nonzeros in each group of 4 columns becomes
//   values [rows, cols / 2]  the 2 stored elements of each group, lower index first;
//   meta   int16 [rows, cols / 16]  one 4-bit code per group: idx0 | idx1 << 2 (idx0 < idx1 are
//          the positions of the stored elements in the group); group g of a 16-column chunk at
//          bits [4 * g, 4 * g + 4), so word w of a row holds columns [16 * w, 16 * w + 16).
// A group with fewer than 2 nonzeros stores zeros at the positions torch's encoder picks (its
// Espresso-minimized truth table), so both produce the same bits.
// fp32 uses the same layout with 4-byte values; it is not torch's fp32 (TF32 1:2 pairs) layout.

/// Group size and elements kept per group of the 2:4 compressed layout.
constexpr int kGroup2to4 = 4;
constexpr int kKept2to4 = 2;
/// Bits of one group's code, groups per metadata word, dense columns per metadata word.
constexpr int kMetaCodeBits = 4;
constexpr int kGroupsPerMetaWord = 4;
constexpr int kColsPerMetaWord = kGroupsPerMetaWord * kGroup2to4;
static_assert(kMetaCodeBits == 2 * 2, "a code holds two 2-bit indices into a group of 4");
static_assert(kGroupsPerMetaWord * kMetaCodeBits == 8 * sizeof(int16_t),
              "one int16 metadata word holds the codes of 4 groups");
static_assert(kColsPerMetaWord == 16, "one metadata word covers 16 dense columns");
static_assert(kGroup2to4 / kKept2to4 == 2, "values hold half of the dense columns");

/// 4-bit code of one group from its nonzero flags: torch's encoding, which for at most 2 nonzeros
/// names their positions (padded with zero positions it chooses: 0000 -> (2, 3), 1000 -> (0, 2),
/// 0100 -> (1, 2), 0010 and 0001 -> (2, 3)). nz2 is implied by the others for valid groups.
MOPT_HOST_DEVICE uint32_t meta_2to4_code(bool nz0, bool nz1, bool nz2, bool nz3) {
  (void)nz2;
  const bool both = nz0 && nz1, only1 = !nz0 && nz1, neither = !nz0 && !nz1;
  const uint32_t idx0 = static_cast<uint32_t>(only1) | static_cast<uint32_t>(neither) << 1;
  const uint32_t idx1 =
      static_cast<uint32_t>(both || neither || nz3) | static_cast<uint32_t>(only1 || !nz1) << 1;
  return idx0 | idx1 << 2;
}

/// Position in its group of the first / second stored element of a 4-bit code.
MOPT_HOST_DEVICE int meta_2to4_first(uint32_t code) { return static_cast<int>(code & 3u); }
MOPT_HOST_DEVICE int meta_2to4_second(uint32_t code) { return static_cast<int>((code >> 2) & 3u); }

/// True when a code names two distinct positions in order, as every encoder output does.
MOPT_HOST_DEVICE bool meta_2to4_valid(uint32_t code) {
  return meta_2to4_first(code) < meta_2to4_second(code);
}

}  // namespace mopt::kernels::sparsity
