#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <type_traits>
#include <utility>
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

// ---------------------------------------------------------------------------------------------
// N:M mask by magnitude alone (no column factor) for M = 2, 4 and 8, AVX2 only. Written with
// 32-byte vectors (GCC/Clang vector extensions) and lane shuffles, which a scalar loop cannot
// express; SSE2 has no 32-byte vectors (GCC lowers a shuffle across two 16-byte halves to scalar
// code), so the baseline copy keeps the float loops above.

#if MOPT_CPU_DISPATCH_AVX2 && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define MOPT_NM_MAGNITUDE_AVX2 1
#endif
#endif
#ifndef MOPT_NM_MAGNITUDE_AVX2
#define MOPT_NM_MAGNITUDE_AVX2 0
#endif

#if MOPT_NM_MAGNITUDE_AVX2

typedef int8_t I8x32 __attribute__((vector_size(32)));
typedef int16_t I16x16 __attribute__((vector_size(32)));
typedef int32_t I32x8 __attribute__((vector_size(32)));

// Elements per iteration: 32 mask bytes, one vector store.
constexpr int kMagnitudeBlock = 32;

// Ranking key of an element: its magnitude bits, in its own width.
template <typename T>
struct MagnitudeKeys {
  using Key = int16_t;  // fp16, bf16
  using Vec = I16x16;
};
template <>
struct MagnitudeKeys<float> {
  using Key = int32_t;
  using Vec = I32x8;
};

// Lane l of the result: lane l + D of v, rotated within l's group of M lanes.
template <int M, int D, typename Vec, std::size_t... L>
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE Vec rotate_groups(Vec v, std::index_sequence<L...>) {
  return __builtin_shufflevector(v, v, static_cast<int>((L & ~(M - 1)) | ((L + D) & (M - 1)))...);
}

// 1 in the lanes where rotate_groups<M, D> wrapped round the group (so brought an element that
// comes earlier in the group), else 0.
template <int M, int D, typename Key, typename Vec, std::size_t... L>
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE Vec wrapped_lanes(std::index_sequence<L...>) {
  return Vec{static_cast<Key>(static_cast<int>(L % M) + D >= M)...};
}

// 0 or -1 in each lane: -1 when the element D places further round the lane's group beats the
// lane's element.
template <int M, int D, typename Key, typename Vec>
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE Vec beaten_by(Vec k) {
  constexpr auto lanes = std::make_index_sequence<sizeof(Vec) / sizeof(Key)>();
  return rotate_groups<M, D>(k, lanes) > k - wrapped_lanes<M, D, Key, Vec>(lanes);
}

// Number of rotations D < M - D, whose beaten_by<M - D> minus_rank_plus_derived derives.
template <int M>
constexpr int kDerivedRanks = (M - 1) / 2;

// Sum over D = 1..M-1 of beaten_by<D>, which is minus the rank of each lane (the number of
// elements of its group that beat it), plus kDerivedRanks<M>. Exactly one of two elements beats
// the other, so beaten_by<M - D> is ~beaten_by<D> rotated by M - D: for D < M - D a shuffle and a
// subtraction (~x = -1 - x, the -1 left out) stand in for a subtraction, a comparison and an
// addition.
template <int M, typename Key, typename Vec, int D = 1>
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE Vec minus_rank_plus_derived(Vec k) {
  constexpr auto lanes = std::make_index_sequence<sizeof(Vec) / sizeof(Key)>();
  const Vec beaten = beaten_by<M, D, Key, Vec>(k);
  Vec sum = beaten;
  if constexpr (D < M - D) sum -= rotate_groups<M, M - D>(beaten, lanes);
  if constexpr (D + 1 <= M - D - 1) sum += minus_rank_plus_derived<M, Key, Vec, D + 1>(k);
  return sum;
}

// The same 32 bytes as another vector type (no instruction).
template <typename To, typename From>
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE To lanes_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "a reinterpretation");
  To to;
  std::memcpy(&to, &v, sizeof(to));
  return to;
}

// Lanes 0, 2, 4, ... of a then b (the low halves of lanes twice as wide).
template <typename Vec, std::size_t... L>
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE Vec even_lanes(Vec a, Vec b, std::index_sequence<L...>) {
  return __builtin_shufflevector(a, b, static_cast<int>(2 * L)...);
}

// Mask bytes (0 or 1) of kMagnitudeBlock elements from their keep lanes (-1 or 0, so any byte of
// a lane is the lane's truth value).
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE I8x32 mask_bytes(const I16x16 (&keep)[2]) {
  const I8x32 truth = even_lanes(lanes_as<I8x32>(keep[0]), lanes_as<I8x32>(keep[1]),
                                 std::make_index_sequence<32>());
  return truth & 1;
}
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE I8x32 mask_bytes(const I32x8 (&keep)[4]) {
  constexpr auto lanes = std::make_index_sequence<16>();
  const I16x16 half[2] = {even_lanes(lanes_as<I16x16>(keep[0]), lanes_as<I16x16>(keep[1]), lanes),
                          even_lanes(lanes_as<I16x16>(keep[2]), lanes_as<I16x16>(keep[3]), lanes)};
  return mask_bytes(half);
}

// Masks `count` elements (whole groups of M) of w by |w|; returns their largest magnitude bits.
//
// The magnitude bits (sign cleared) of finite IEEE values, read as integers, order exactly as
// the magnitudes do (a larger exponent, or the same exponent and a larger mantissa, is the larger
// number, subnormals included) and are equal exactly when the magnitudes are (+0 and -0 both give
// 0). The fp32 scores |w| * 1 of the float loops are these magnitudes exactly (bf16 and fp16
// widen to fp32 exactly), so ranking the bits picks the same mask, ties included, with no
// conversion and in the element's own width: 16 lanes per operation for bf16 and fp16. Only Inf
// and NaN rank otherwise (a float NaN compares false); the caller redoes a range whose returned
// bits reach kNonFiniteMagnitudeOf<T>. (Under flush-denormal mode, torch.set_flush_denormal, the
// float loops would score fp32/bf16 subnormals as 0; the bits keep ordering them by value, as the
// CUDA kernel does.)
//
// A vector holds whole groups. Rotating it within each group by D = 1..M-1 brings every other
// element j of the group in front of element i once. j beats i when k_j > k_i, or k_j == k_i and
// j < i (the earlier one wins a tie), i.e. when k_j > k_i - [j < i], and j < i exactly when the
// rotation wrapped; keys are >= 0, so k_i - 1 does not overflow. The number of elements that beat
// i is its rank in nm_keep_bits, and the mask keeps rank < n.
template <int M, typename T>
MOPT_TARGET_AVX2 MOPT_ALWAYS_INLINE uint32_t mask_magnitude_avx2(const T* __restrict__ w,
                                                                 int64_t count, int n,
                                                                 uint8_t* __restrict__ out) {
  using Key = typename MagnitudeKeys<T>::Key;
  using Vec = typename MagnitudeKeys<T>::Vec;
  constexpr int kLanes = sizeof(Vec) / sizeof(Key);
  constexpr int kVecs = kMagnitudeBlock / kLanes;
  static_assert(kLanes % M == 0, "a vector holds whole groups");
  static_assert(sizeof(T) == sizeof(Key), "one key per element");
  constexpr Key kSignClear = static_cast<Key>(~(Key{1} << (8 * sizeof(Key) - 1)));
  // rank < n, with minus_rank_plus_derived = -rank + kDerivedRanks.
  const Key threshold = static_cast<Key>(kDerivedRanks<M> - n);
  Vec max_key{};
  int64_t e = 0;
  for (; e + kMagnitudeBlock <= count; e += kMagnitudeBlock) {
    Vec keep[kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) {
      Vec k;
      std::memcpy(&k, w + e + v * kLanes, sizeof(Vec));
      k &= kSignClear;
      max_key = k > max_key ? k : max_key;
      keep[v] = minus_rank_plus_derived<M, Key, Vec>(k) > threshold;
    }
    const I8x32 bytes = mask_bytes(keep);
    std::memcpy(out + e, &bytes, sizeof(bytes));
  }
  Key largest = 0;
  for (int l = 0; l < kLanes; ++l) largest = std::max(largest, max_key[l]);
  // The groups after the last block, one at a time with the same comparisons.
  for (; e < count; e += M) {
    Key k[M];
    for (int i = 0; i < M; ++i) {
      k[i] = static_cast<Key>(magnitude_bits(w[e + i]));
      largest = std::max(largest, k[i]);
    }
    for (int i = 0; i < M; ++i) {
      int rank = 0;
      for (int j = 0; j < M; ++j) rank += j < i ? k[j] >= k[i] : (j > i && k[j] > k[i]);
      out[e + i] = static_cast<uint8_t>(rank < n);
    }
  }
  return static_cast<uint32_t>(largest);
}

// mask_rows<T, false> for AVX2; returns true when one of rows [r0, r1) holds a NaN or Inf.
template <typename T>
MOPT_TARGET_AVX2 bool mask_rows_magnitude_avx2(const NmMaskParams& p, int64_t r0, int64_t r1) {
  // Groups never straddle rows, so rows [r0, r1) are one run of whole groups.
  const int64_t begin = r0 * p.cols, count = (r1 - r0) * p.cols;
  const T* w = static_cast<const T*>(p.w) + begin;
  uint8_t* out = p.mask + begin;
  uint32_t largest = 0;
  switch (p.m) {
    case 2:
      largest = mask_magnitude_avx2<2, T>(w, count, p.n, out);
      break;
    case 4:
      largest = mask_magnitude_avx2<4, T>(w, count, p.n, out);
      break;
    case 8:
      largest = mask_magnitude_avx2<8, T>(w, count, p.n, out);
      break;
    default:
      return mask_rows_impl<T, false>(p, r0, r1);
  }
  // A NaN or Inf: the float loops give the range the mask they always did, and report it.
  return largest >= kNonFiniteMagnitudeOf<T> && mask_rows_impl<T, false>(p, r0, r1);
}

#endif  // MOPT_NM_MAGNITUDE_AVX2

template <typename T, bool kFactor>
bool mask_rows(const NmMaskParams& p, int64_t r0, int64_t r1) {
  if (!cpu_has_avx2()) return mask_rows_baseline<T, kFactor>(p, r0, r1);
#if MOPT_NM_MAGNITUDE_AVX2
  if constexpr (!kFactor) return mask_rows_magnitude_avx2<T>(p, r0, r1);
#endif
  return mask_rows_avx2<T, kFactor>(p, r0, r1);
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
