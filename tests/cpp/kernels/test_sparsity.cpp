// CPU N:M masks against a naive float64 sort-based selection, the vectorized fixed-M loops
// against the shared per-group routine, and the 2:4 compressed layout against torch's encoding
// table (transcribed here by hand), with the argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/cpu_isa.h"
#include "common/dtype.h"
#include "reference.h"
#include "sparsity/sparsity.h"

namespace mopt::kernels {
namespace {

using sparsity::Compress2to4Params;
using sparsity::Decompress2to4Params;
using sparsity::NmMaskParams;

// ---------------------------------------------------------------------------------------------
// Reference: per group, order the columns by score (fp32 |w| * f, the contract's precision,
// compared in float64) descending with a stable sort, so equal scores keep the lower column,
// and keep the first n.
std::vector<uint8_t> ref_nm_mask(const std::vector<double>& w, const std::vector<float>* factor,
                                 int64_t rows, int64_t cols, int n, int m) {
  std::vector<uint8_t> mask(rows * cols, 0);
  std::vector<int> order(m);
  std::vector<double> score(m);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c0 = 0; c0 < cols; c0 += m) {
      for (int i = 0; i < m; ++i) {
        const float f = factor != nullptr ? (*factor)[c0 + i] : 1.0f;
        score[i] = static_cast<double>(static_cast<float>(std::fabs(w[r * cols + c0 + i])) * f);
      }
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return score[a] > score[b]; });
      for (int k = 0; k < n; ++k) mask[r * cols + c0 + order[k]] = 1;
    }
  }
  return mask;
}

// Weights stored as T, and their values as the reference reads them.
template <typename T>
struct Weights {
  std::vector<T> stored;
  std::vector<double> values;
};

template <typename T>
Weights<T> make_weights(const std::vector<float>& v) {
  Weights<T> w{std::vector<T>(v.size()), std::vector<double>(v.size())};
  for (size_t i = 0; i < v.size(); ++i) {
    store_float(&w.stored[i], v[i]);
    w.values[i] = load_float(&w.stored[i]);
  }
  return w;
}

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::kFloat32;
  if constexpr (std::is_same_v<T, Half>) return DType::kFloat16;
  return DType::kBFloat16;
}

template <typename T>
std::vector<uint8_t> run_mask(const std::vector<T>& w, const std::vector<float>* factor,
                              int64_t rows, int64_t cols, int n, int m) {
  std::vector<uint8_t> mask(rows * cols, 0xcc);
  NmMaskParams p;
  p.w = w.data();
  p.dtype = dtype_of<T>();
  p.rows = rows;
  p.cols = cols;
  p.column_factor = factor != nullptr ? factor->data() : nullptr;
  p.n = n;
  p.m = m;
  p.mask = mask.data();
  sparsity::nm_mask_cpu(p);
  return mask;
}

struct NmCase {
  int n, m;
  int64_t rows, cols;
  bool factor;
};

std::vector<NmCase> nm_cases() {
  std::vector<NmCase> cases;
  const std::pair<int, int> patterns[] = {{2, 4}, {4, 8}, {1, 4}, {3, 4}, {16, 32},
                                          {1, 2}, {2, 2}, {3, 7}, {1, 1}, {5, 16}};
  for (const auto& [n, m] : patterns) {
    for (bool factor : {false, true}) {
      cases.push_back({n, m, 5, static_cast<int64_t>(m), factor});  // one group per row
      // Large enough for several parallel tasks and a vector loop with a remainder.
      cases.push_back({n, m, 67, static_cast<int64_t>(m) * 129, factor});
    }
  }
  return cases;
}

template <typename T>
void check_against_reference(uint32_t seed) {
  for (const NmCase& c : nm_cases()) {
    SCOPED_TRACE(testing::Message() << c.n << ":" << c.m << " [" << c.rows << ", " << c.cols
                                    << "] factor " << c.factor);
    const auto w = make_weights<T>(test::random_values(c.rows * c.cols, seed++));
    std::vector<float> factor;
    if (c.factor) {
      factor = test::random_values(c.cols, seed++);
      for (float& f : factor) f = std::fabs(f);
      factor[0] = 0.0f;  // a zero factor makes the column's scores tie at 0
    }
    const auto* fp = c.factor ? &factor : nullptr;
    const auto expected = ref_nm_mask(w.values, fp, c.rows, c.cols, c.n, c.m);
    ASSERT_EQ(run_mask(w.stored, fp, c.rows, c.cols, c.n, c.m), expected);
    // The baseline (SSE2) copy of the loops gives the same mask.
    set_cpu_avx2_allowed(false);
    const auto baseline = run_mask(w.stored, fp, c.rows, c.cols, c.n, c.m);
    set_cpu_avx2_allowed(true);
    ASSERT_EQ(baseline, expected);
  }
}

TEST(NmMask, Float32MatchesReference) { check_against_reference<float>(100); }
TEST(NmMask, Float16MatchesReference) { check_against_reference<Half>(200); }
TEST(NmMask, BFloat16MatchesReference) { check_against_reference<BFloat16>(300); }

TEST(NmMask, KeepsExactlyNPerGroup) {
  const int64_t rows = 31, cols = 96;
  const auto w = test::random_values(rows * cols, 7);
  for (const auto& [n, m] : {std::pair{2, 4}, {4, 8}, {16, 32}, {5, 6}}) {
    const auto mask = run_mask(w, nullptr, rows, cols, n, m);
    for (int64_t g = 0; g < rows * cols / m; ++g) {
      ASSERT_EQ(std::accumulate(mask.begin() + g * m, mask.begin() + (g + 1) * m, 0), n);
    }
  }
}

// Ties keep the lower column: values from a tiny set, so most groups hold equal magnitudes
// (+x and -x tie, as do +0 and -0).
TEST(NmMask, TiesKeepTheLowerIndex) {
  const int64_t rows = 40, cols = 64;
  std::mt19937 gen(11);
  const float choices[] = {0.0f, -0.0f, 1.0f, -1.0f, 2.0f, -2.0f};
  std::vector<float> v(rows * cols);
  for (float& x : v) x = choices[gen() % 6];
  std::vector<double> values(v.begin(), v.end());
  for (const auto& [n, m] : {std::pair{2, 4}, {1, 4}, {3, 4}, {4, 8}, {1, 2}, {16, 32}, {3, 16}}) {
    SCOPED_TRACE(testing::Message() << n << ":" << m);
    EXPECT_EQ(run_mask(v, nullptr, rows, cols, n, m),
              ref_nm_mask(values, nullptr, rows, cols, n, m));
  }
  // All equal: the first n of every group.
  const std::vector<float> same(8, -3.0f);
  EXPECT_EQ(run_mask(same, nullptr, 1, 8, 2, 4), (std::vector<uint8_t>{1, 1, 0, 0, 1, 1, 0, 0}));
  EXPECT_EQ(run_mask(same, nullptr, 1, 8, 3, 8), (std::vector<uint8_t>{1, 1, 1, 0, 0, 0, 0, 0}));
}

// A hand-checkable 2:4 and 1:4 example, with and without a column factor.
TEST(NmMask, SmallExample) {
  const std::vector<float> w = {0.5f, -3.0f, 2.0f, 0.1f, /**/ -1.0f, 1.0f, 4.0f, -4.0f};
  EXPECT_EQ(run_mask(w, nullptr, 1, 8, 2, 4), (std::vector<uint8_t>{0, 1, 1, 0, 0, 0, 1, 1}));
  EXPECT_EQ(run_mask(w, nullptr, 1, 8, 1, 4), (std::vector<uint8_t>{0, 1, 0, 0, 0, 0, 1, 0}));
  // Scores 5, 3, 0.2, 0.1 | 10, 1, 0.4, 4: the factor changes the winners.
  const std::vector<float> f = {10.0f, 1.0f, 0.1f, 1.0f, 10.0f, 1.0f, 0.1f, 1.0f};
  EXPECT_EQ(run_mask(w, &f, 1, 8, 2, 4), (std::vector<uint8_t>{1, 1, 0, 0, 1, 0, 0, 1}));
}

// The fixed-M loops (M = 2, 4, 8) must pick exactly what nm_keep_bits picks, NaN and Inf scores
// included (the kernel's contract excludes them, but the paths must not disagree even then).
template <typename T>
void check_fixed_loops_match_shared_routine() {
  for (int m : {2, 4, 8}) {
    const int64_t rows = 9, cols = m * 70;
    auto v = test::random_values(rows * cols, 40 + m);
    for (size_t i = 0; i < v.size(); i += 13) v[i] = std::numeric_limits<float>::quiet_NaN();
    for (size_t i = 7; i < v.size(); i += 29) v[i] = -std::numeric_limits<float>::infinity();
    for (size_t i = 5; i < v.size(); i += 17) v[i] = v[i - 1];  // ties
    const auto w = make_weights<T>(v);
    for (int n = 1; n <= m; ++n) {
      const auto mask = run_mask(w.stored, nullptr, rows, cols, n, m);
      float s[sparsity::kMaxGroup];
      for (int64_t g = 0; g < rows * cols / m; ++g) {
        for (int i = 0; i < m; ++i) {
          s[i] = sparsity::nm_score(load_float(&w.stored[g * m + i]), 1.0f);
        }
        const uint32_t keep = sparsity::nm_keep_bits(s, 1, m, n);
        for (int i = 0; i < m; ++i) {
          ASSERT_EQ(mask[g * m + i], (keep >> i) & 1u) << n << ":" << m << " group " << g;
        }
      }
    }
  }
}

TEST(NmMask, FixedGroupLoopsMatchSharedRoutine) {
  check_fixed_loops_match_shared_routine<float>();
  check_fixed_loops_match_shared_routine<Half>();
  check_fixed_loops_match_shared_routine<BFloat16>();
}

// Without a column factor the AVX2 loops rank the stored magnitude bits as integers. Edge values
// where that could part from ranking the values: +x and -x, +0 and -0, neighbours one unit in the
// last place apart, the smallest subnormals, the smallest normal and the largest finite values,
// drawn from so few codes that most groups hold ties.
template <typename T>
void check_edge_values(const uint32_t (&codes)[8], uint32_t sign_bit) {
  const int64_t rows = 33, cols = 16 * 37;  // 33 * 592 = 32 * 610 + 16: a partial block
  std::mt19937 gen(21);
  std::vector<T> stored(rows * cols);
  std::vector<double> values(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    const uint32_t bits = codes[gen() % 8] | (gen() % 2 == 0 ? 0u : sign_bit);
    if constexpr (sizeof(T) == 4) {
      std::memcpy(&stored[i], &bits, sizeof(T));
    } else {
      const uint16_t half_bits = static_cast<uint16_t>(bits);
      std::memcpy(&stored[i], &half_bits, sizeof(T));
    }
    values[i] = load_float(&stored[i]);
  }
  for (int m : {2, 4, 8, 16}) {
    for (int n = 1; n <= m; n += (m == 16 ? 5 : 1)) {
      SCOPED_TRACE(testing::Message() << n << ":" << m);
      const auto expected = ref_nm_mask(values, nullptr, rows, cols, n, m);
      ASSERT_EQ(run_mask(stored, nullptr, rows, cols, n, m), expected);
      set_cpu_avx2_allowed(false);
      const auto baseline = run_mask(stored, nullptr, rows, cols, n, m);
      set_cpu_avx2_allowed(true);
      ASSERT_EQ(baseline, expected);
    }
  }
}

TEST(NmMask, EdgeValuesRankAsValues) {
  check_edge_values<float>({0x00000000u, 0x00000001u, 0x00000002u, 0x00800000u, 0x3f800000u,
                            0x3f800001u, 0x7f7ffffeu, 0x7f7fffffu},
                           0x80000000u);
  check_edge_values<Half>({0x0000u, 0x0001u, 0x0002u, 0x0400u, 0x3c00u, 0x3c01u, 0x7bfeu, 0x7bffu},
                          0x8000u);
  check_edge_values<BFloat16>(
      {0x0000u, 0x0001u, 0x0002u, 0x0080u, 0x3f80u, 0x3f81u, 0x7f7eu, 0x7f7fu}, 0x8000u);
}

TEST(NmMask, ReportsNonFiniteWeights) {
  const int64_t rows = 12, cols = 64;
  for (int m : {4, 8, 16}) {
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
          -std::numeric_limits<float>::infinity()}) {
      auto v = test::random_values(rows * cols, 3);
      v[7 * cols + 37] = bad;
      const auto w = make_weights<BFloat16>(v);
      std::vector<uint8_t> mask(rows * cols);
      int32_t found = 0;
      NmMaskParams p;
      p.w = w.stored.data();
      p.dtype = DType::kBFloat16;
      p.rows = rows;
      p.cols = cols;
      p.n = m / 2;
      p.m = m;
      p.mask = mask.data();
      p.nonfinite_found = &found;
      sparsity::nm_mask_cpu(p);
      EXPECT_EQ(found, 1) << m << " " << bad;
      // The largest finite values do not trip it.
      for (float& x : v) x = std::isfinite(x) ? x : 3.3e38f;
      const auto big = make_weights<float>(v);
      p.w = big.stored.data();
      p.dtype = DType::kFloat32;
      found = 0;
      sparsity::nm_mask_cpu(p);
      EXPECT_EQ(found, 0) << m;
    }
  }
}

TEST(NmMask, EmptyWeightWritesNothing) {
  NmMaskParams p;
  p.rows = 0;
  p.cols = 8;
  EXPECT_NO_THROW(sparsity::nm_mask_cpu(p));
}

TEST(NmMask, RejectsBadArguments) {
  std::vector<float> w(12, 1.0f);
  std::vector<uint8_t> mask(12);
  NmMaskParams p;
  p.w = w.data();
  p.rows = 2;
  p.cols = 6;
  p.mask = mask.data();
  p.n = 2;
  p.m = 4;
  EXPECT_THROW(sparsity::nm_mask_cpu(p), KernelError);  // 6 % 4 != 0
  try {
    sparsity::nm_mask_cpu(p);
  } catch (const KernelError& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of M = 4"), std::string::npos) << e.what();
  }
  p.cols = 4;
  p.rows = 3;
  p.n = 5;
  EXPECT_THROW(sparsity::nm_mask_cpu(p), KernelError);  // n > m
  p.n = 0;
  EXPECT_THROW(sparsity::nm_mask_cpu(p), KernelError);
  p.n = 1;
  p.m = 0;
  EXPECT_THROW(sparsity::nm_mask_cpu(p), KernelError);
  p.m = sparsity::kMaxGroup * 2;
  p.cols = p.m;
  p.rows = 0;
  EXPECT_THROW(sparsity::nm_mask_cpu(p), KernelError);
  p.m = 4;
  p.cols = 4;
  p.rows = 1;
  p.w = nullptr;
  EXPECT_THROW(sparsity::nm_mask_cpu(p), KernelError);
}

// ---------------------------------------------------------------------------------------------
// 2:4 layout. Torch's encoding of each nonzero pattern (its comment in
// sparse_semi_structured_from_dense_cutlass), pattern written as flags of positions 0..3:
// the positions (idx0, idx1) of the two stored elements.
struct Encoding {
  int flags[4];
  int idx0, idx1;
};
constexpr Encoding kTorchEncodings[] = {
    {{1, 1, 0, 0}, 0, 1}, {{1, 0, 1, 0}, 0, 2}, {{0, 1, 1, 0}, 1, 2}, {{1, 0, 0, 1}, 0, 3},
    {{0, 1, 0, 1}, 1, 3}, {{0, 0, 1, 1}, 2, 3}, {{0, 0, 0, 0}, 2, 3}, {{0, 0, 0, 1}, 2, 3},
    {{0, 0, 1, 0}, 2, 3}, {{0, 1, 0, 0}, 1, 2}, {{1, 0, 0, 0}, 0, 2},
};

template <typename T>
struct Compressed {
  std::vector<T> values;
  std::vector<int16_t> meta;
};

template <typename T>
Compressed<T> compress(const std::vector<T>& dense, int64_t rows, int64_t cols) {
  Compressed<T> c{std::vector<T>(rows * cols / 2), std::vector<int16_t>(rows * cols / 16)};
  Compress2to4Params p;
  p.dense = dense.data();
  p.dtype = dtype_of<T>();
  p.rows = rows;
  p.cols = cols;
  p.values = c.values.data();
  p.meta = c.meta.data();
  sparsity::compress_2to4_cpu(p);
  return c;
}

template <typename T>
std::vector<T> decompress(const Compressed<T>& c, int64_t rows, int64_t cols) {
  std::vector<T> dense(rows * cols);
  Decompress2to4Params p;
  p.values = c.values.data();
  p.meta = c.meta.data();
  p.dtype = dtype_of<T>();
  p.rows = rows;
  p.cols = cols;
  p.dense = dense.data();
  sparsity::decompress_2to4_cpu(p);
  return dense;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// One row of 16 columns, checked by hand: groups [a 0 b 0], [0 c 0 d], [0 0 0 0], [0 e 0 0]
// have codes 0|2<<2 = 0x8, 1|3<<2 = 0xD, 2|3<<2 = 0xE, 1|2<<2 = 0x9, group g at bits 4g.
TEST(Compress2to4, HandCheckedLayout) {
  const std::vector<float> dense = {1.5f, 0, -2.0f, 0, 0, 3.0f,  0, 4.0f,
                                    0,    0, 0,     0, 0, -5.0f, 0, 0};
  const auto c = compress(dense, 1, 16);
  EXPECT_EQ(c.values, (std::vector<float>{1.5f, -2.0f, 3.0f, 4.0f, 0.0f, 0.0f, -5.0f, 0.0f}));
  ASSERT_EQ(c.meta.size(), 1u);
  EXPECT_EQ(static_cast<uint16_t>(c.meta[0]), 0x9ED8u);
  EXPECT_TRUE(same_bits(decompress(c, 1, 16), dense));
}

// Every pattern of torch's table, in every group slot of a word and in a second word and row.
TEST(Compress2to4, MatchesTorchEncodingTable) {
  const int64_t rows = 2, cols = 32;
  for (const Encoding& e : kTorchEncodings) {
    for (int slot = 0; slot < 8; ++slot) {
      std::vector<float> dense(rows * cols, 0.0f);
      const int64_t row = slot % 2, c0 = slot * 4;
      for (int i = 0; i < 4; ++i) dense[row * cols + c0 + i] = e.flags[i] ? 10.0f + i : 0.0f;
      const auto c = compress(dense, rows, cols);
      const int64_t word = row * 2 + c0 / 16, shift = 4 * ((c0 % 16) / 4);
      const uint32_t code = (static_cast<uint16_t>(c.meta[word]) >> shift) & 0xfu;
      EXPECT_EQ(code, static_cast<uint32_t>(e.idx0 | e.idx1 << 2))
          << e.flags[0] << e.flags[1] << e.flags[2] << e.flags[3] << " slot " << slot;
      const int64_t v = row * cols / 2 + c0 / 2;
      EXPECT_EQ(c.values[v], dense[row * cols + c0 + e.idx0]);
      EXPECT_EQ(c.values[v + 1], dense[row * cols + c0 + e.idx1]);
      EXPECT_TRUE(same_bits(decompress(c, rows, cols), dense));
    }
  }
}

// Random 2:4 (and sparser) data in every dtype: values are the nonzeros in order, padded per the
// table, and decompression restores every bit (signed zeros and NaN payloads included).
template <typename T>
void check_round_trip(uint32_t seed) {
  const int64_t rows = 53, cols = 160;
  auto v = test::random_values(rows * cols, seed);
  std::mt19937 gen(seed);
  for (int64_t g = 0; g < rows * cols / 4; ++g) {
    const int keep = static_cast<int>(gen() % 3);  // 0, 1 or 2 nonzeros
    std::vector<int> pos = {0, 1, 2, 3};
    std::shuffle(pos.begin(), pos.end(), gen);
    for (int k = keep; k < 4; ++k) v[g * 4 + pos[k]] = (gen() % 2) ? 0.0f : -0.0f;
  }
  v[1] = std::numeric_limits<float>::quiet_NaN();  // a NaN is a nonzero
  v[0] = v[2] = v[3] = 0.0f;
  const auto w = make_weights<T>(v);
  const auto c = compress(w.stored, rows, cols);
  for (int64_t g = 0; g < rows * cols / 4; ++g) {
    int flags[4];
    for (int i = 0; i < 4; ++i) flags[i] = w.values[g * 4 + i] != 0.0;  // NaN != 0
    const Encoding* e = nullptr;
    for (const Encoding& t : kTorchEncodings) {
      if (std::equal(flags, flags + 4, t.flags)) e = &t;
    }
    ASSERT_NE(e, nullptr);
    const uint32_t code = (static_cast<uint16_t>(c.meta[g / 4]) >> (4 * (g % 4))) & 0xfu;
    ASSERT_EQ(code, static_cast<uint32_t>(e->idx0 | e->idx1 << 2)) << "group " << g;
    ASSERT_EQ(std::memcmp(&c.values[2 * g], &w.stored[4 * g + e->idx0], sizeof(T)), 0);
    ASSERT_EQ(std::memcmp(&c.values[2 * g + 1], &w.stored[4 * g + e->idx1], sizeof(T)), 0);
  }
  const auto back = decompress(c, rows, cols);
  // Zeros the encoder dropped come back as +0; everything it stored comes back bit for bit.
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (w.values[i] == 0.0) {
      ASSERT_EQ(load_float(&back[i]), 0.0f) << i;
    } else {
      ASSERT_EQ(std::memcmp(&back[i], &w.stored[i], sizeof(T)), 0) << i;
    }
  }
}

TEST(Compress2to4, RoundTripFloat32) { check_round_trip<float>(500); }
TEST(Compress2to4, RoundTripFloat16) { check_round_trip<Half>(600); }
TEST(Compress2to4, RoundTripBFloat16) { check_round_trip<BFloat16>(700); }

// An N:M mask with N <= 2, M = 4 applied to a weight always compresses.
TEST(Compress2to4, AcceptsMaskedWeights) {
  const int64_t rows = 17, cols = 64;
  auto w = test::random_values(rows * cols, 21);
  const auto mask = run_mask(w, nullptr, rows, cols, 2, 4);
  for (int64_t i = 0; i < rows * cols; ++i) w[i] *= mask[i];
  const auto c = compress(w, rows, cols);
  EXPECT_EQ(decompress(c, rows, cols), w);  // value equality: a pruned -0 comes back as +0
}

TEST(Compress2to4, RejectsThreeNonzerosAndWritesNothing) {
  const int64_t rows = 3, cols = 32;
  std::vector<float> dense(rows * cols, 0.0f);
  dense[2 * cols + 20] = dense[2 * cols + 21] = dense[2 * cols + 23] = 1.0f;  // row 2, [20, 24)
  dense[2 * cols + 24] = 1.0f;
  std::vector<float> values(rows * cols / 2, 7.0f);
  std::vector<int16_t> meta(rows * cols / 16, 7);
  Compress2to4Params p;
  p.dense = dense.data();
  p.rows = rows;
  p.cols = cols;
  p.values = values.data();
  p.meta = meta.data();
  try {
    sparsity::compress_2to4_cpu(p);
    FAIL() << "expected KernelError";
  } catch (const KernelError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("row 2, columns [20, 24) with 3 nonzeros"), std::string::npos) << msg;
  }
  EXPECT_EQ(values, std::vector<float>(rows * cols / 2, 7.0f));
  EXPECT_EQ(meta, std::vector<int16_t>(rows * cols / 16, 7));
}

TEST(Compress2to4, RejectsColumnsNotMultipleOf16) {
  std::vector<float> dense(8, 0.0f), values(4);
  std::vector<int16_t> meta(1);
  Compress2to4Params p;
  p.dense = dense.data();
  p.rows = 1;
  p.cols = 8;
  p.values = values.data();
  p.meta = meta.data();
  EXPECT_THROW(sparsity::compress_2to4_cpu(p), KernelError);
  Decompress2to4Params d;
  d.values = values.data();
  d.meta = meta.data();
  d.rows = 1;
  d.cols = 8;
  d.dense = dense.data();
  EXPECT_THROW(sparsity::decompress_2to4_cpu(d), KernelError);
}

TEST(Decompress2to4, RejectsCodesNoEncoderWrites) {
  for (uint32_t code : {0x0u, 0x5u, 0x4u, 0xFu, 0x1u}) {  // (0,0), (1,1), (0,1) reversed, ...
    if ((code & 3u) < ((code >> 2) & 3u)) continue;
    std::vector<float> values(8, 1.0f), dense(16, 9.0f);
    std::vector<int16_t> meta = {static_cast<int16_t>(0x8u | code << 4)};  // second group bad
    Decompress2to4Params p;
    p.values = values.data();
    p.meta = meta.data();
    p.rows = 1;
    p.cols = 16;
    p.dense = dense.data();
    EXPECT_THROW(sparsity::decompress_2to4_cpu(p), KernelError) << code;
    EXPECT_EQ(dense, std::vector<float>(16, 9.0f));
  }
}

}  // namespace
}  // namespace mopt::kernels
