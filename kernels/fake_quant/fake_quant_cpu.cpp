#include <algorithm>
#include <atomic>
#include <vector>

#include "common/parallel.h"
#include "fake_quant/fake_quant.h"
#include "fake_quant/fake_quant_math.h"

namespace mopt::kernels::fake_quant {

void fake_quant_check(const FakeQuantParams& p) {
  if (p.format == Format::kInt) {
    MOPT_CHECK(p.num_bits >= 2 && p.num_bits <= 16, "integer num_bits must be in [2, 16], got ",
               p.num_bits);
    MOPT_CHECK(p.amax != nullptr, "integer fake quantization needs an amax");
  } else {
    MOPT_CHECK(p.exponent_bits >= 1 && p.exponent_bits <= 5,
               "minifloat exponent_bits must be in [1, 5], got ", p.exponent_bits);
    MOPT_CHECK(p.mantissa_bits >= 0 && p.mantissa_bits <= 10,
               "minifloat mantissa_bits must be in [0, 10], got ", p.mantissa_bits);
  }
  MOPT_CHECK(p.layout.numel == 0 || (p.x != nullptr && p.y != nullptr), "null data pointer");
}

namespace {

constexpr int64_t kGrain = 1 << 15;

// Applies q over x[begin, end) for one kernel call; the reduced index advances row by row.
template <typename T, typename Q>
void run_range(const FakeQuantParams& p, const Q& q, const float* scales, int64_t begin,
               int64_t end) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const ReduceLayout& l = p.layout;
  const int64_t inner = l.inner();
  int64_t row = begin / inner;
  int64_t col = begin % inner;
  int64_t pos = begin;
  while (pos < end) {
    const int64_t n = std::min(inner - col, end - pos);
    const T* xr = x + pos;
    T* yr = y + pos;
    if (scales == nullptr) {  // unscaled minifloat cast
      for (int64_t j = 0; j < n; ++j) store_float(yr + j, q(load_float(xr + j), 1.0f));
    } else if (l.inner_kept()) {
      const float* s = scales + l.row_offset(row) + col;
      for (int64_t j = 0; j < n; ++j) store_float(yr + j, apply_scaled(q, load_float(xr + j), s[j]));
    } else {
      const float s = scales[l.row_offset(row)];
      if (s == 0.0f) {
        for (int64_t j = 0; j < n; ++j) store_float(yr + j, 0.0f);
      } else {
        for (int64_t j = 0; j < n; ++j) store_float(yr + j, q(load_float(xr + j), s));
      }
    }
    pos += n;
    col = 0;
    ++row;
  }
}

template <typename T>
bool any_negative(const void* data, int64_t numel) {
  const T* x = static_cast<const T*>(data);
  std::atomic<bool> found{false};
  parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
    bool neg = false;
    for (int64_t i = b; i < e; ++i) neg |= load_float(x + i) < 0.0f;
    if (neg) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

template <typename T, typename Q>
void run(const FakeQuantParams& p, const Q& q) {
  std::vector<float> scales;
  if (p.amax != nullptr) {
    scales.resize(p.layout.out_numel);
    for (int64_t i = 0; i < p.layout.out_numel; ++i) {
      scales[i] = scale_from_amax(p.amax[i], q.max_value());
    }
  }
  const float* s = p.amax != nullptr ? scales.data() : nullptr;
  parallel_for(0, p.layout.numel, kGrain,
               [&](int64_t b, int64_t e) { run_range<T>(p, q, s, b, e); });
}

}  // namespace

void fake_quant_cpu(const FakeQuantParams& p) {
  fake_quant_check(p);
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    if (p.format == Format::kInt) {
      if (p.is_unsigned && p.negative_found != nullptr && any_negative<T>(p.x, p.layout.numel)) {
        *p.negative_found = 1;
      }
      const IntQuant q{int_minbound(p.num_bits, p.is_unsigned, p.narrow_range),
                       int_maxbound(p.num_bits, p.is_unsigned)};
      run<T>(p, q);
    } else {
      const MinifloatQuant q{p.mantissa_bits, minifloat_min_exponent(p.exponent_bits),
                             minifloat_max(p.exponent_bits, p.mantissa_bits)};
      run<T>(p, q);
    }
  });
}

}  // namespace mopt::kernels::fake_quant
