#include <algorithm>
#include <vector>

#include "common/cpu_isa.h"
#include "common/parallel.h"
#include "gptq/gptq.h"
#include "gptq/gptq_math.h"

namespace mopt::kernels::gptq {

namespace {

// Enough multiply-adds per parallel task to amortize the dispatch.
constexpr int64_t kMinTaskWork = 1 << 16;

void check_spec(const QuantSpec& s) {
  if (s.format == Format::kInt) {
    MOPT_CHECK(s.num_bits >= 2 && s.num_bits <= 16, "integer num_bits must be in [2, 16], got ",
               s.num_bits);
  } else if (s.format == Format::kMinifloat) {
    MOPT_CHECK(s.exponent_bits >= 1 && s.exponent_bits <= 5 && s.mantissa_bits >= 0 &&
                   s.mantissa_bits <= 10,
               "minifloat format E", s.exponent_bits, "M", s.mantissa_bits, " is not supported");
  } else {
    MOPT_CHECK(s.nvfp4_tensor_scale >= 0.0f, "NVFP4 tensor scale must be non-negative, got ",
               s.nvfp4_tensor_scale);
  }
}

void check_groups(const Groups& g, int64_t cols) {
  MOPT_CHECK(g.group_size > 0, "group_size must be positive, got ", g.group_size);
  MOPT_CHECK(g.count == ceil_div(cols, g.group_size), "group count ", g.count,
             " does not cover ", cols, " columns in groups of ", g.group_size);
  MOPT_CHECK(g.param != nullptr, "null group parameters");
}

void check_zero(const QuantSpec& s, const Groups& g) {
  MOPT_CHECK(!s.asymmetric || (s.format == Format::kInt && g.zero != nullptr),
             "asymmetric GPTQ needs an integer format and zero-point storage");
}

// Parameters of group g of one row from the weights v[0, n) of that group.
inline void set_group(const ElementQuant& q, const float* v, int64_t n, int64_t first_col,
                      float* param, int32_t* pin, float* zero) {
  if (q.asymmetric) {
    const GroupRange g = group_range(v, n, 1);
    const fake_quant::AsymRange r = fake_quant::int_asym_range(g.lo, g.hi, q.num_bits);
    *param = r.amax;
    *zero = r.zero_point;
    return;
  }
  const GroupMax m = group_max(v, n, 1);
  *param = q.param_from_amax(m.amax);
  if (pin != nullptr) *pin = *param != 0.0f ? static_cast<int32_t>(first_col + m.argmax) : -1;
}

}  // namespace

void gptq_check(const BlockArgs& a) {
  MOPT_CHECK(a.rows >= 0 && a.ncols >= 0 && a.col0 >= 0, "negative size");
  MOPT_CHECK(a.ldw >= a.col0 + a.ncols, "ldw ", a.ldw, " is smaller than the block end ",
             a.col0 + a.ncols);
  MOPT_CHECK(a.ldh >= a.col0 + a.ncols, "ldh ", a.ldh, " is smaller than the block end ",
             a.col0 + a.ncols);
  MOPT_CHECK(
      a.rows == 0 || a.ncols == 0 ||
          (a.w != nullptr && a.hinv != nullptr && a.err != nullptr && a.col_index != nullptr),
      "null data pointer");
  check_spec(a.spec);
  check_groups(a.groups, a.ldw);
  check_zero(a.spec, a.groups);
  if (a.groups_at_start) {
    MOPT_CHECK(a.col0 % a.groups.group_size == 0 &&
                   (a.ncols % a.groups.group_size == 0 || a.col0 + a.ncols == a.ldw),
               "groups computed at their first column must lie inside the block: block [", a.col0,
               ", ", a.col0 + a.ncols, ") and group size ", a.groups.group_size);
  }
}

void gptq_group_params_cpu(const GroupParamsArgs& a) {
  check_spec(a.spec);
  check_groups(a.groups, a.cols);
  check_zero(a.spec, a.groups);
  MOPT_CHECK(a.ld >= a.cols, "ld ", a.ld, " is smaller than cols ", a.cols);
  const ElementQuant q = make_element_quant(a.spec);
  const Groups& g = a.groups;
  const bool pins = a.spec.format == Format::kNVFP4 && g.pin != nullptr;
  parallel_for(0, a.rows, rows_grain(a.cols, kMinTaskWork), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t k = 0; k < g.count; ++k) {
        const int64_t c = k * g.group_size;
        set_group(q, a.w + r * a.ld + c, std::min(g.group_size, a.cols - c), c,
                  g.param + r * g.count + k, pins ? g.pin + r * g.count + k : nullptr,
                  g.zero != nullptr ? g.zero + r * g.count + k : nullptr);
      }
    }
  });
}

namespace {

// The column loop on rows [r0, r1) of the block, written once and instantiated for the baseline
// and (quant_rows_avx2) AVX2. `group` and `first`: per column of the block, its group and
// whether it opens the group (the integer divisions, once per block instead of per element).
MOPT_ALWAYS_INLINE void quant_rows(const BlockArgs& a, const ElementQuant& q, const int64_t* group,
                                   const uint8_t* first, int64_t r0, int64_t r1) {
  const Groups& g = a.groups;
  const bool pins = a.spec.format == Format::kNVFP4 && g.pin != nullptr;
  const int64_t n = a.ncols;
  for (int64_t r = r0; r < r1; ++r) {
    float* __restrict__ wr = a.w + r * a.ldw + a.col0;
    float* __restrict__ er = a.err + r * n;
    float* gp = g.param + r * g.count;
    float* gz = q.asymmetric ? g.zero + r * g.count : nullptr;
    int32_t* gpin = pins ? g.pin + r * g.count : nullptr;
    float loss = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = a.col_index[a.col0 + j];
      const int64_t k = group[j];
      if (a.groups_at_start && first[j]) {
        set_group(q, wr + j, std::min(g.group_size, n - j), c, gp + k, pins ? gpin + k : nullptr,
                  gz ? gz + k : nullptr);
      }
      const float x = wr[j];
      float y = q(x, gp[k], gz ? gz[k] : 0.0f);
      if (pins && gpin[k] >= 0) {
        if (q.reaches_top_code(x, gp[k])) {
          gpin[k] = -1;
        } else if (gpin[k] == c) {
          y = q.top_code(x, gp[k]);
          gpin[k] = -1;
        }
      }
      const float* __restrict__ h = a.hinv + (a.col0 + j) * a.ldh + a.col0;
      const float e = (x - y) / h[j];
      wr[j] = y;
      er[j] = e;
      loss += e * e;
      for (int64_t t = j + 1; t < n; ++t) wr[t] -= e * h[t];
    }
    if (a.row_loss != nullptr) a.row_loss[r] += 0.5f * loss;
  }
}

#if MOPT_CPU_DISPATCH_AVX2
MOPT_TARGET_AVX2 void quant_rows_avx2(const BlockArgs& a, const ElementQuant& q,
                                      const int64_t* group, const uint8_t* first, int64_t r0,
                                      int64_t r1) {
  quant_rows(a, q, group, first, r0, r1);
}
#endif

}  // namespace

void gptq_block_cpu(const BlockArgs& a) {
  gptq_check(a);
  const ElementQuant q = make_element_quant(a.spec);
  const int64_t n = a.ncols;
  std::vector<int64_t> group(static_cast<size_t>(n));
  std::vector<uint8_t> first(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = a.col_index[a.col0 + j];
    group[j] = c / a.groups.group_size;
    first[j] = c % a.groups.group_size == 0;
  }
#if MOPT_CPU_DISPATCH_AVX2
  const bool avx2 = cpu_has_avx2();
#else
  const bool avx2 = false;
#endif
  parallel_for(0, a.rows, rows_grain(n * n / 2 + n, kMinTaskWork), [&](int64_t r0, int64_t r1) {
#if MOPT_CPU_DISPATCH_AVX2
    if (avx2) {
      quant_rows_avx2(a, q, group.data(), first.data(), r0, r1);
      return;
    }
#endif
    (void)avx2;
    quant_rows(a, q, group.data(), first.data(), r0, r1);
  });
}

void sparsegpt_check(const PruneBlockArgs& a) {
  MOPT_CHECK(a.rows >= 0 && a.ncols >= 0 && a.col0 >= 0, "negative size");
  MOPT_CHECK(a.m >= 1 && a.m <= sparsity::kMaxGroup && a.n >= 1 && a.n <= a.m,
             "N:M sparsity needs 1 <= N <= M <= ", sparsity::kMaxGroup, ", got ", a.n, ":", a.m);
  MOPT_CHECK(a.col0 % a.m == 0 && a.ncols % a.m == 0, "the block [", a.col0, ", ",
             a.col0 + a.ncols, ") must hold whole groups of ", a.m, " columns");
  MOPT_CHECK(a.ldw >= a.col0 + a.ncols, "ldw ", a.ldw, " is smaller than the block end ",
             a.col0 + a.ncols);
  MOPT_CHECK(a.ldh >= a.col0 + a.ncols, "ldh ", a.ldh, " is smaller than the block end ",
             a.col0 + a.ncols);
  MOPT_CHECK(a.rows == 0 || a.ncols == 0 ||
                 (a.w != nullptr && a.hinv != nullptr && a.err != nullptr && a.mask != nullptr),
             "null data pointer");
}

namespace {

// SparseGPT's column loop on rows [r0, r1) of the block, written once and instantiated for the
// baseline and (prune_rows_avx2) AVX2: the propagation loop is where the time goes.
// `diag`: the block's U_jj, contiguous (read at every group of every row).
MOPT_ALWAYS_INLINE void prune_rows(const PruneBlockArgs& a, const float* diag, int64_t r0,
                                   int64_t r1) {
  const int64_t n = a.ncols;
  for (int64_t r = r0; r < r1; ++r) {
    float* __restrict__ wr = a.w + r * a.ldw + a.col0;
    float* __restrict__ er = a.err + r * n;
    uint8_t* mr = a.mask + r * a.ldw + a.col0;
    float loss = 0.0f;
    // Group by group (no j % m per column: an integer division costs more than the rest of a
    // kept column's work).
    for (int64_t g0 = 0; g0 < n; g0 += a.m) {
      const uint32_t keep = prune_group_keep(wr + g0, diag + g0, /*ldh=*/0, a.m, a.n);
      for (int t = 0; t < a.m; ++t) {
        mr[g0 + t] = static_cast<uint8_t>((keep >> t) & 1u);
        er[g0 + t] = 0.0f;  // kept: e == 0, nothing to propagate
      }
      // The pruned columns in order, m - n of them whatever the data: a loop over set bits
      // instead of a branch per column that the predictor gets wrong half the time.
      const uint32_t group = a.m >= 32 ? ~0u : (1u << a.m) - 1u;
      for (uint32_t pruned = ~keep & group; pruned != 0; pruned &= pruned - 1u) {
        const int64_t j = g0 + __builtin_ctz(pruned);
        const float* __restrict__ h = a.hinv + (a.col0 + j) * a.ldh + a.col0;
        const float e = wr[j] / h[j];  // (x - 0) / U_jj
        wr[j] = 0.0f;
        er[j] = e;
        loss += e * e;
        for (int64_t u = j + 1; u < n; ++u) wr[u] -= e * h[u];
      }
    }
    if (a.row_loss != nullptr) a.row_loss[r] += 0.5f * loss;
  }
}

#if MOPT_CPU_DISPATCH_AVX2
MOPT_TARGET_AVX2 void prune_rows_avx2(const PruneBlockArgs& a, const float* diag, int64_t r0,
                                      int64_t r1) {
  prune_rows(a, diag, r0, r1);
}
#endif

}  // namespace

void sparsegpt_block_cpu(const PruneBlockArgs& a) {
  sparsegpt_check(a);
  const int64_t n = a.ncols;
#if MOPT_CPU_DISPATCH_AVX2
  const bool avx2 = cpu_has_avx2();
#else
  const bool avx2 = false;
#endif
  std::vector<float> diag(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) diag[j] = a.hinv[(a.col0 + j) * (a.ldh + 1)];
  parallel_for(0, a.rows, rows_grain(n * n / 2 + n, kMinTaskWork), [&](int64_t r0, int64_t r1) {
#if MOPT_CPU_DISPATCH_AVX2
    if (avx2) {
      prune_rows_avx2(a, diag.data(), r0, r1);
      return;
    }
#endif
    (void)avx2;
    prune_rows(a, diag.data(), r0, r1);
  });
}

}  // namespace mopt::kernels::gptq
