#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/cpu_isa.h"
#include "common/parallel.h"
#include "sparsity/sparsity.h"
#include "sparsity/sparsity_math.h"

namespace mopt::kernels::sparsity {

namespace {

// Elements per parallel task: enough to amortize the dispatch of a memory-bound loop.
constexpr int64_t kMinTaskElements = 1 << 16;

int64_t rows_grain(int64_t cols) {
  return cols > 0 ? std::max<int64_t>(1, kMinTaskElements / cols) : kMinTaskElements;
}

// ---------------------------------------------------------------------------------------------
// N:M mask.

// Score of element j, folding its magnitude bits into `max_bits` (which then tells whether the
// row holds a NaN or Inf: an integer max vectorizes, a float test for NaN would not).
template <typename T, bool kFactor>
MOPT_ALWAYS_INLINE float score_at(const T* w, const float* factor, int64_t j, uint32_t& max_bits) {
  const float x = load_float(w + j);
  const uint32_t bits = magnitude_bits(x);
  max_bits = bits > max_bits ? bits : max_bits;
  return nm_score_from_magnitude(bits, kFactor ? factor[j] : 1.0f);
}

// Groups of a compile-time size M along one row. The rank of score i counts the scores that beat
// it: s_j >= s_i for j < i (an earlier equal score wins the tie) and s_j > s_i for j > i, which is
// nm_keep_bits' (s_j > s_i) || (s_j == s_i && j < i) term for term, NaN included, so the masks
// are identical. Written without branches or early exits, the group loop vectorizes across
// groups (the M scores of a group are an interleaved load). Returns the row's largest magnitude
// bits.
template <int M, typename T, bool kFactor>
MOPT_ALWAYS_INLINE uint32_t mask_row_fixed(const T* __restrict__ w,
                                           const float* __restrict__ factor, int64_t groups, int n,
                                           uint8_t* __restrict__ out) {
  // The M mask bytes of a group are assembled in one integer and stored at once: a contiguous
  // store per group instead of M interleaved byte stores (which cost more shuffles than the
  // comparisons themselves).
  using Word = std::conditional_t<M == 2, uint16_t, std::conditional_t<M == 4, uint32_t, uint64_t>>;
  static_assert(sizeof(Word) == M, "one mask byte per group element");
  uint32_t max_bits = 0;
  for (int64_t g = 0; g < groups; ++g) {
    float s[M];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) s[i] = score_at<T, kFactor>(w, factor, g * M + i, max_bits);
    Word word = 0;
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      int rank = 0;
#pragma GCC unroll 16
      for (int j = 0; j < i; ++j) rank += s[j] >= s[i];
#pragma GCC unroll 16
      for (int j = i + 1; j < M; ++j) rank += s[j] > s[i];
      word |= static_cast<Word>(rank < n) << (8 * i);
    }
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(out + g * M, &word, sizeof(Word));
    } else {
      for (int i = 0; i < M; ++i) out[g * M + i] = static_cast<uint8_t>(word >> (8 * i));
    }
  }
  return max_bits;
}

// Any group size: the shared per-group routine on a scratch copy of the scores.
template <typename T, bool kFactor>
MOPT_ALWAYS_INLINE uint32_t mask_row_generic(const T* w, const float* factor, int64_t groups, int m,
                                             int n, uint8_t* out) {
  float s[kMaxGroup];
  uint32_t max_bits = 0;
  for (int64_t g = 0; g < groups; ++g) {
    for (int i = 0; i < m; ++i) s[i] = score_at<T, kFactor>(w, factor, g * m + i, max_bits);
    const uint32_t keep = nm_keep_bits(s, 1, m, n);
    for (int i = 0; i < m; ++i) out[g * m + i] = static_cast<uint8_t>((keep >> i) & 1u);
  }
  return max_bits;
}

// Masks rows [r0, r1); returns true when one of them holds a NaN or Inf.
template <typename T, bool kFactor>
MOPT_ALWAYS_INLINE bool mask_rows_impl(const NmMaskParams& p, int64_t r0, int64_t r1) {
  const T* w = static_cast<const T*>(p.w);
  const int64_t groups = p.cols / p.m;
  uint32_t max_bits = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* wr = w + r * p.cols;
    uint8_t* out = p.mask + r * p.cols;
    uint32_t row_bits = 0;
    switch (p.m) {
      case 2:
        row_bits = mask_row_fixed<2, T, kFactor>(wr, p.column_factor, groups, p.n, out);
        break;
      case 4:
        row_bits = mask_row_fixed<4, T, kFactor>(wr, p.column_factor, groups, p.n, out);
        break;
      case 8:
        row_bits = mask_row_fixed<8, T, kFactor>(wr, p.column_factor, groups, p.n, out);
        break;
      default:
        row_bits = mask_row_generic<T, kFactor>(wr, p.column_factor, groups, p.m, p.n, out);
    }
    max_bits = row_bits > max_bits ? row_bits : max_bits;
  }
  return max_bits >= kNonFiniteMagnitude;
}

template <typename T, bool kFactor>
bool mask_rows_baseline(const NmMaskParams& p, int64_t r0, int64_t r1) {
  return mask_rows_impl<T, kFactor>(p, r0, r1);
}

template <typename T, bool kFactor>
MOPT_TARGET_AVX2 bool mask_rows_avx2(const NmMaskParams& p, int64_t r0, int64_t r1) {
  return mask_rows_impl<T, kFactor>(p, r0, r1);
}

template <typename T, bool kFactor>
bool mask_rows(const NmMaskParams& p, int64_t r0, int64_t r1) {
  return cpu_has_avx2() ? mask_rows_avx2<T, kFactor>(p, r0, r1)
                        : mask_rows_baseline<T, kFactor>(p, r0, r1);
}

// ---------------------------------------------------------------------------------------------
// 2:4 compression.

template <typename T>
int nonzeros_in_group(const T* g) {
  int count = 0;
  for (int i = 0; i < kGroup2to4; ++i) count += magnitude_bits(g[i]) != 0;
  return count;
}

// Throws KernelError naming the first group of `dense` with more than 2 nonzeros, if any.
template <typename T>
void check_compressible(const Compress2to4Params& p) {
  const T* dense = static_cast<const T*>(p.dense);
  const int64_t groups = p.cols / kGroup2to4;
  // Per row: number of invalid groups and the first one (-1 if none), merged in row order below.
  std::vector<int64_t> bad(p.rows, 0), first(p.rows, -1);
  parallel_for(0, p.rows, rows_grain(p.cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        if (nonzeros_in_group(dense + r * p.cols + g * kGroup2to4) > kKept2to4) {
          if (bad[r]++ == 0) first[r] = g;
        }
      }
    }
  });
  int64_t total = 0, first_row = -1;
  for (int64_t r = 0; r < p.rows; ++r) {
    if (bad[r] > 0 && first_row < 0) first_row = r;
    total += bad[r];
  }
  if (total == 0) return;
  const int64_t c = first[first_row] * kGroup2to4;
  MOPT_CHECK(false, "2:4 compression needs at most 2 nonzeros in every group of 4 columns, but ",
             total, " group(s) have more; the first is row ", first_row, ", columns [", c, ", ",
             c + kGroup2to4, ") with ", nonzeros_in_group(dense + first_row * p.cols + c),
             " nonzeros");
}

template <typename T>
void compress_rows(const Compress2to4Params& p, int64_t r0, int64_t r1) {
  const T* dense = static_cast<const T*>(p.dense);
  T* values = static_cast<T*>(p.values);
  const int64_t words = p.cols / kColsPerMetaWord;
  for (int64_t r = r0; r < r1; ++r) {
    const T* d = dense + r * p.cols;
    T* v = values + r * (p.cols / 2);
    for (int64_t w = 0; w < words; ++w) {
      uint32_t word = 0;
      for (int g = 0; g < kGroupsPerMetaWord; ++g) {
        const T* grp = d + w * kColsPerMetaWord + g * kGroup2to4;
        const uint32_t code =
            meta_2to4_code(magnitude_bits(grp[0]) != 0, magnitude_bits(grp[1]) != 0,
                           magnitude_bits(grp[2]) != 0, magnitude_bits(grp[3]) != 0);
        T* out = v + (w * kGroupsPerMetaWord + g) * kKept2to4;
        out[0] = grp[meta_2to4_first(code)];
        out[1] = grp[meta_2to4_second(code)];
        word |= code << (g * kMetaCodeBits);
      }
      p.meta[r * words + w] = static_cast<int16_t>(static_cast<uint16_t>(word));
    }
  }
}

// Throws KernelError naming the first invalid code of `meta`, if any.
void check_codes(const Decompress2to4Params& p) {
  const int64_t words = p.cols / kColsPerMetaWord;
  std::vector<int64_t> first(p.rows, -1);  // per row: first invalid group, -1 if none
  parallel_for(0, p.rows, rows_grain(p.cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t w = 0; w < words && first[r] < 0; ++w) {
        const uint32_t word = static_cast<uint16_t>(p.meta[r * words + w]);
        for (int g = 0; g < kGroupsPerMetaWord; ++g) {
          if (!meta_2to4_valid((word >> (g * kMetaCodeBits)) & 0xfu)) {
            first[r] = w * kGroupsPerMetaWord + g;
            break;
          }
        }
      }
    }
  });
  for (int64_t r = 0; r < p.rows; ++r) {
    if (first[r] < 0) continue;
    const int64_t w = first[r] / kGroupsPerMetaWord;
    const int g = static_cast<int>(first[r] % kGroupsPerMetaWord);
    const uint32_t code =
        (static_cast<uint16_t>(p.meta[r * words + w]) >> (g * kMetaCodeBits)) & 0xfu;
    MOPT_CHECK(false, "2:4 metadata of row ", r, ", columns [", first[r] * kGroup2to4, ", ",
               first[r] * kGroup2to4 + kGroup2to4, ") has code ", code, " whose positions (",
               meta_2to4_first(code), ", ", meta_2to4_second(code),
               ") are not increasing; it was not written by a 2:4 compressor");
  }
}

template <typename T>
void decompress_rows(const Decompress2to4Params& p, int64_t r0, int64_t r1) {
  const T* values = static_cast<const T*>(p.values);
  T* dense = static_cast<T*>(p.dense);
  const int64_t words = p.cols / kColsPerMetaWord;
  T zero;
  std::memset(&zero, 0, sizeof(T));
  for (int64_t r = r0; r < r1; ++r) {
    const T* v = values + r * (p.cols / 2);
    T* d = dense + r * p.cols;
    for (int64_t w = 0; w < words; ++w) {
      const uint32_t word = static_cast<uint16_t>(p.meta[r * words + w]);
      for (int g = 0; g < kGroupsPerMetaWord; ++g) {
        const uint32_t code = (word >> (g * kMetaCodeBits)) & 0xfu;
        T* grp = d + w * kColsPerMetaWord + g * kGroup2to4;
        const T* in = v + (w * kGroupsPerMetaWord + g) * kKept2to4;
        for (int i = 0; i < kGroup2to4; ++i) grp[i] = zero;
        grp[meta_2to4_first(code)] = in[0];
        grp[meta_2to4_second(code)] = in[1];
      }
    }
  }
}

void check_2to4_sizes(int64_t rows, int64_t cols, const char* what) {
  MOPT_CHECK(rows >= 0 && cols >= 0, what, ": negative size [", rows, ", ", cols, "]");
  MOPT_CHECK(cols % kColsPerMetaWord == 0, what, ": the number of columns (", cols,
             ") must be a multiple of ", kColsPerMetaWord,
             " (one int16 metadata word covers 16 columns)");
}

}  // namespace

void nm_mask_check(const NmMaskParams& p) {
  MOPT_CHECK(p.m >= 1 && p.m <= kMaxGroup, "N:M sparsity: M must be in [1, ", kMaxGroup, "], got ",
             p.m);
  MOPT_CHECK(p.n >= 1 && p.n <= p.m, "N:M sparsity: N must be in [1, M = ", p.m, "], got ", p.n);
  MOPT_CHECK(p.rows >= 0 && p.cols >= 0, "N:M sparsity: negative size [", p.rows, ", ", p.cols,
             "]");
  MOPT_CHECK(p.cols % p.m == 0, "N:M sparsity: the number of columns (", p.cols,
             ") must be a multiple of M = ", p.m);
  MOPT_CHECK(p.rows * p.cols == 0 || (p.w != nullptr && p.mask != nullptr), "null data pointer");
}

void nm_mask_cpu(const NmMaskParams& p) {
  nm_mask_check(p);
  if (p.rows * p.cols == 0) return;
  std::atomic<bool> nonfinite{false};
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    parallel_for(0, p.rows, rows_grain(p.cols), [&](int64_t r0, int64_t r1) {
      const bool found = p.column_factor != nullptr ? mask_rows<T, true>(p, r0, r1)
                                                    : mask_rows<T, false>(p, r0, r1);
      if (found) nonfinite.store(true, std::memory_order_relaxed);
    });
  });
  if (nonfinite.load() && p.nonfinite_found != nullptr) *p.nonfinite_found = 1;
}

void compress_2to4_check(const Compress2to4Params& p) {
  check_2to4_sizes(p.rows, p.cols, "2:4 compression");
  MOPT_CHECK(
      p.rows * p.cols == 0 || (p.dense != nullptr && p.values != nullptr && p.meta != nullptr),
      "null data pointer");
}

void compress_2to4_cpu(const Compress2to4Params& p) {
  compress_2to4_check(p);
  if (p.rows * p.cols == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    check_compressible<T>(p);
    parallel_for(0, p.rows, rows_grain(p.cols),
                 [&](int64_t r0, int64_t r1) { compress_rows<T>(p, r0, r1); });
  });
}

void decompress_2to4_check(const Decompress2to4Params& p) {
  check_2to4_sizes(p.rows, p.cols, "2:4 decompression");
  MOPT_CHECK(
      p.rows * p.cols == 0 || (p.values != nullptr && p.meta != nullptr && p.dense != nullptr),
      "null data pointer");
}

void decompress_2to4_cpu(const Decompress2to4Params& p) {
  decompress_2to4_check(p);
  if (p.rows * p.cols == 0) return;
  check_codes(p);
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    parallel_for(0, p.rows, rows_grain(p.cols),
                 [&](int64_t r0, int64_t r1) { decompress_rows<T>(p, r0, r1); });
  });
}

}  // namespace mopt::kernels::sparsity
