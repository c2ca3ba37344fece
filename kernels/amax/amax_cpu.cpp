#include <algorithm>
#include <vector>

#include "common/cpu_isa.h"
#include "common/parallel.h"
#include "amax/amax.h"
#include "amax/amax_math.h"

namespace mopt::kernels::reduce {
namespace {

constexpr int64_t kGrain = 1 << 15;

// max |x[0, n)| as fp32 bits. |x| of non-negative floats orders like its bit pattern, and every
// NaN pattern lies above inf, so an integer max (which vectorizes, unlike a float max that must
// keep NaN) finds the largest magnitude and sees any NaN.
template <typename T>
MOPT_ALWAYS_INLINE uint32_t abs_max_bits(const T* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t a = float_to_bits(load_float(x + j)) & 0x7fffffffu;
    m = a > m ? a : m;
  }
  return m;
}

// Folds x[begin, end) into out (which must hold partial maxima already).
template <typename T>
MOPT_ALWAYS_INLINE void fold_range_impl(const T* x, const ReduceLayout& l, float* out,
                                        int64_t begin, int64_t end) {
  const int64_t inner = l.inner();
  int64_t row = begin / inner;
  int64_t col = begin % inner;
  int64_t pos = begin;
  while (pos < end) {
    const int64_t n = std::min(inner - col, end - pos);
    const T* xr = x + pos;
    float* o = out + l.row_offset(row);
    if (l.inner_kept()) {
      // Partial maxima are non-negative or the canonical NaN, so max_keep_nan is an integer max
      // of the bit patterns here too.
      o += col;
      for (int64_t j = 0; j < n; ++j) {
        const uint32_t a = float_to_bits(abs_canonical(load_float(xr + j)));
        const uint32_t m = float_to_bits(o[j]);
        o[j] = bits_to_float(a > m ? a : m);
      }
    } else {
      const uint32_t m = abs_max_bits(xr, n);
      *o = max_keep_nan(*o, bits_to_float(m > 0x7f800000u ? kCanonicalNaNBits : m));
    }
    pos += n;
    col = 0;
    ++row;
  }
}

template <typename T>
void fold_range_baseline(const T* x, const ReduceLayout& l, float* out, int64_t begin,
                         int64_t end) {
  fold_range_impl(x, l, out, begin, end);
}

template <typename T>
MOPT_TARGET_AVX2 void fold_range_avx2(const T* x, const ReduceLayout& l, float* out, int64_t begin,
                                      int64_t end) {
  fold_range_impl(x, l, out, begin, end);
}

template <typename T>
void fold_range(const T* x, const ReduceLayout& l, float* out, int64_t begin, int64_t end) {
  if (cpu_has_avx2()) {
    fold_range_avx2(x, l, out, begin, end);
  } else {
    fold_range_baseline(x, l, out, begin, end);
  }
}

template <typename T>
void run(const AmaxParams& p) {
  const T* x = static_cast<const T*>(p.x);
  const ReduceLayout& l = p.layout;
  float* out = p.out;
  std::fill(out, out + l.out_numel, 0.0f);
  if (l.numel == 0) return;
  const bool outer_kept = l.ndim > 1 && l.out_strides[0] != 0;
  if (outer_kept || (l.ndim == 1 && l.inner_kept())) {
    // Slices of the outermost dim write disjoint outputs: split over it directly.
    const int64_t outer = l.sizes[0];
    const int64_t slice = l.numel / outer;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(slice, 1));
    parallel_for(0, outer, grain,
                 [&](int64_t b, int64_t e) { fold_range<T>(x, l, out, b * slice, e * slice); });
    return;
  }
  // Otherwise each chunk reduces into its own partial buffer, merged in chunk order.
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(parallel_max_threads(), (l.numel + kGrain - 1) / kGrain));
  if (chunks == 1) {
    fold_range<T>(x, l, out, 0, l.numel);
    return;
  }
  std::vector<float> partial(static_cast<size_t>(chunks * l.out_numel), 0.0f);
  const int64_t step = (l.numel + chunks - 1) / chunks;
  parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      fold_range<T>(x, l, partial.data() + c * l.out_numel, c * step,
                    std::min(l.numel, (c + 1) * step));
    }
  });
  for (int64_t c = 0; c < chunks; ++c) {
    const float* pc = partial.data() + c * l.out_numel;
    for (int64_t i = 0; i < l.out_numel; ++i) out[i] = max_keep_nan(out[i], pc[i]);
  }
}

}  // namespace

void amax_cpu(const AmaxParams& p) {
  if (p.layout.out_numel == 0) return;  // e.g. keeping an empty axis: nothing to write
  MOPT_CHECK(p.out != nullptr, "amax output pointer is null");
  MOPT_CHECK(p.layout.numel == 0 || p.x != nullptr, "amax input pointer is null");
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] { run<T>(p); });
}

}  // namespace mopt::kernels::reduce
