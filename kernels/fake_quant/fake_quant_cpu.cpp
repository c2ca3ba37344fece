#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "common/cpu_isa.h"
#include "common/parallel.h"
#include "fake_quant/fake_quant.h"
#include "fake_quant/fake_quant_math.h"

namespace mopt::kernels::fake_quant {

void fake_quant_check(const FakeQuantParams& p) {
  if (p.format == Format::kInt) {
    MOPT_CHECK(p.num_bits >= 2 && p.num_bits <= 16, "integer num_bits must be in [2, 16], got ",
               p.num_bits);
    MOPT_CHECK(p.amax != nullptr, "integer fake quantization needs an amax");
    MOPT_CHECK(!p.full_range || (!p.is_unsigned && !p.narrow_range),
               "full_range applies to signed integer formats without narrow_range");
    MOPT_CHECK(p.zero_point == nullptr || p.full_range,
               "a zero point needs the full-range scaling of asymmetric formats");
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
// Elements per step: 16-bit inputs are quantized into an fp32 tile of this size (L1-resident)
// and narrowed from there.
constexpr int64_t kTile = 2048;

// The loops below carry no branch per element (the zero-scale case of apply_scaled and the
// fp16/bf16 conversions are selects), so the compiler vectorizes each of them. For 16-bit types
// the fp32 results go through a float tile and are narrowed in a second loop: fused into one
// loop, GCC narrows intermediate values early and shuffles them between 16- and 32-bit lanes,
// which costs more than the extra pass over L1. `out` may equal `x` (in place).
template <typename T>
MOPT_ALWAYS_INLINE void narrow_span(const float* v, T* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) store_float(out + j, v[j]);
}

template <typename T, typename Q>
MOPT_ALWAYS_INLINE void quant_span(const T* x, T* out, float* work, int64_t n, const Q& q,
                                   float scale) {
  if constexpr (std::is_same_v<T, float>) {
    MOPT_IVDEP
    for (int64_t j = 0; j < n; ++j) out[j] = q(x[j], scale);
  } else {
    for (int64_t j = 0; j < n; ++j) work[j] = q(load_float(x + j), scale);
    narrow_span(work, out, n);
  }
}

template <typename T, typename Q>
MOPT_ALWAYS_INLINE void quant_span_scales(const T* x, T* out, float* work, int64_t n, const Q& q,
                                          const float* scales) {
  if constexpr (std::is_same_v<T, float>) {
    MOPT_IVDEP
    for (int64_t j = 0; j < n; ++j) out[j] = apply_scaled(q, x[j], scales[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) work[j] = apply_scaled(q, load_float(x + j), scales[j]);
    narrow_span(work, out, n);
  }
}

// Asymmetric integer spans: one scale and zero point for the span, or one per element.
template <typename T>
MOPT_ALWAYS_INLINE void quant_span_zp(const T* x, T* out, float* work, int64_t n,
                                      const IntQuant& q, float scale, float zp) {
  if constexpr (std::is_same_v<T, float>) {
    MOPT_IVDEP
    for (int64_t j = 0; j < n; ++j) out[j] = int_quant_zp(q, x[j], scale, zp);
  } else {
    for (int64_t j = 0; j < n; ++j) work[j] = int_quant_zp(q, load_float(x + j), scale, zp);
    narrow_span(work, out, n);
  }
}

template <typename T>
MOPT_ALWAYS_INLINE void quant_span_scales_zp(const T* x, T* out, float* work, int64_t n,
                                             const IntQuant& q, const float* scales,
                                             const float* zps) {
  if constexpr (std::is_same_v<T, float>) {
    MOPT_IVDEP
    for (int64_t j = 0; j < n; ++j) out[j] = apply_scaled_zp(q, x[j], scales[j], zps[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      work[j] = apply_scaled_zp(q, load_float(x + j), scales[j], zps[j]);
    }
    narrow_span(work, out, n);
  }
}

template <typename T>
MOPT_ALWAYS_INLINE void zero_span(T* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) store_float(out + j, 0.0f);
}

// Applies q over x[begin, end) for one kernel call; the reduced index advances row by row.
template <typename T, typename Q>
MOPT_ALWAYS_INLINE void run_range_impl(const FakeQuantParams& p, const Q& q, const float* scales,
                                       int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const ReduceLayout& l = p.layout;
  const int64_t inner = l.inner();
  int64_t row = begin / inner;
  int64_t col = begin % inner;
  alignas(64) float work[std::is_same_v<T, float> ? 1 : kTile];
  for (int64_t pos = begin; pos < end;) {
    const int64_t n = std::min({inner - col, end - pos, kTile});
    const T* xr = x + pos;
    T* out = y + pos;
    if (scales == nullptr) {  // unscaled minifloat cast
      quant_span(xr, out, work, n, q, 1.0f);
    } else if (l.inner_kept()) {
      const int64_t off = l.row_offset(row) + col;
      if constexpr (std::is_same_v<Q, IntQuant>) {
        if (p.zero_point != nullptr) {
          quant_span_scales_zp(xr, out, work, n, q, scales + off, p.zero_point + off);
        } else {
          quant_span_scales(xr, out, work, n, q, scales + off);
        }
      } else {
        quant_span_scales(xr, out, work, n, q, scales + off);
      }
    } else {
      const int64_t off = l.row_offset(row);
      const float s = scales[off];
      if (s == 0.0f) {
        zero_span(out, n);
      } else if constexpr (std::is_same_v<Q, IntQuant>) {
        if (p.zero_point != nullptr) {
          quant_span_zp(xr, out, work, n, q, s, p.zero_point[off]);
        } else {
          quant_span(xr, out, work, n, q, s);
        }
      } else {
        quant_span(xr, out, work, n, q, s);
      }
    }
    pos += n;
    col += n;
    if (col == inner) {
      col = 0;
      ++row;
    }
  }
}

template <typename T, typename Q>
void run_range_baseline(const FakeQuantParams& p, const Q& q, const float* scales, int64_t begin,
                        int64_t end) {
  run_range_impl<T, Q>(p, q, scales, begin, end);
}

template <typename T, typename Q>
MOPT_TARGET_AVX2 void run_range_avx2(const FakeQuantParams& p, const Q& q, const float* scales,
                                     int64_t begin, int64_t end) {
  run_range_impl<T, Q>(p, q, scales, begin, end);
}

template <typename T>
bool any_negative(const void* data, int64_t numel) {
  const T* x = static_cast<const T*>(data);
  std::atomic<bool> found{false};
  parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
    int neg = 0;  // an int OR-reduction vectorizes; a bool one does not
    for (int64_t i = b; i < e; ++i) neg |= load_float(x + i) < 0.0f ? 1 : 0;
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
  const bool avx2 = cpu_has_avx2();
  parallel_for(0, p.layout.numel, kGrain, [&](int64_t b, int64_t e) {
    if (avx2) {
      run_range_avx2<T>(p, q, s, b, e);
    } else {
      run_range_baseline<T>(p, q, s, b, e);
    }
  });
}

}  // namespace

void int_asym_range_cpu(const AsymRangeParams& p) {
  MOPT_CHECK(p.num_bits >= 2 && p.num_bits <= 16, "integer num_bits must be in [2, 16], got ",
             p.num_bits);
  for (int64_t i = 0; i < p.n; ++i) {
    const AsymRange r = int_asym_range(p.lo[i], p.hi[i], p.num_bits);
    p.amax[i] = r.amax;
    p.zero_point[i] = r.zero_point;
  }
}

void fake_quant_cpu(const FakeQuantParams& p) {
  fake_quant_check(p);
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    if (p.format == Format::kInt) {
      if (p.is_unsigned && p.negative_found != nullptr && any_negative<T>(p.x, p.layout.numel)) {
        *p.negative_found = 1;
      }
      const IntQuant q = make_int_quant(p.num_bits, p.is_unsigned, p.narrow_range, p.full_range);
      run<T>(p, q);
    } else {
      const MinifloatQuant q{p.mantissa_bits, minifloat_min_exponent(p.exponent_bits),
                             minifloat_max(p.exponent_bits, p.mantissa_bits)};
      run<T>(p, q);
    }
  });
}

}  // namespace mopt::kernels::fake_quant
