#include <algorithm>
#include <vector>

#include "block_quant/block_quant.h"
#include "block_quant/block_quant_math.h"
#include "common/cpu_isa.h"
#include "common/parallel.h"

namespace mopt::kernels::block_quant {

int64_t blocks_per_row(const BlockQuantParams& p) {
  return p.block_size > 0 ? ceil_div(p.row_len, p.block_size) : 0;
}

void block_quant_check(const BlockQuantParams& p) {
  MOPT_CHECK(p.rows >= 0 && p.row_len >= 0, "block quantization of a [", p.rows, ", ", p.row_len,
             "] tensor: sizes must be non-negative");
  MOPT_CHECK(p.block_size >= 1, "block_size must be positive, got ", p.block_size);
  MOPT_CHECK(p.rows * p.row_len == 0 || (p.x != nullptr && p.y != nullptr), "null data pointer");
  switch (p.format) {
    case Format::kNVFP4:
      MOPT_CHECK(p.global_amax != nullptr, "NVFP4 needs the tensor amax (global_amax)");
      break;
    case Format::kMX:
      MOPT_CHECK((p.exponent_bits == 0 && p.mantissa_bits >= 1 && p.mantissa_bits <= 7) ||
                     (p.exponent_bits >= 1 && p.exponent_bits <= 5 && p.mantissa_bits >= 1 &&
                      p.mantissa_bits <= 10),
                 "MX element format E", p.exponent_bits, "M", p.mantissa_bits,
                 " is not supported; use a minifloat with exponent bits in [1, 5] and mantissa "
                 "bits in [1, 10], or E0M1..E0M7 for integers (E0M7 = INT8)");
      break;
    case Format::kNF4:
      MOPT_CHECK(p.scale_block_size >= -1,
                 "NF4 scale_block_size must be 0 (no double "
                 "quantization), -1 (one group) or positive, got ",
                 p.scale_block_size);
      break;
  }
}

size_t block_quant_workspace_bytes(const BlockQuantParams& p) {
  if (p.format != Format::kNF4 || p.scale_block_size == 0) return 0;
  const int64_t blocks = p.rows * blocks_per_row(p);
  if (blocks == 0) return 0;
  const int64_t group = p.scale_block_size > 0 ? p.scale_block_size : blocks;
  const int64_t groups = ceil_div(blocks, group);
  const int64_t chunks = ceil_div(blocks, kNf4SumChunk);
  auto round16 = [](int64_t bytes) { return (bytes + 15) / 16 * 16; };
  // absmax, dequantized scales, per-group max bits, per-chunk sums, mean
  return static_cast<size_t>(round16(blocks * 4) * 2 + round16(groups * 4) + round16(chunks * 8) +
                             16);
}

namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel task

// max |x| over one block as bits: an integer max of |x| bits is exact, NaN-sticky (every NaN is
// above inf) and vectorizes with plain SSE2, which a float max with a NaN flag does not.
template <typename T>
float block_amax_of(const T* x, int64_t n) {
  int32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t a = static_cast<int32_t>(abs_bits(load_float(x + i)));
    m = a > m ? a : m;
  }
  return bits_to_float(static_cast<uint32_t>(m));
}

// Full blocks of a compile-time size: fixed trip counts unroll into straight SIMD code (the
// per-block work of a runtime-length loop, prologue and tail, costs more than the block itself).
// Whether the amax comes from block_amax is a template argument too: a runtime choice inside the
// loop keeps GCC from vectorizing the element loop.
template <typename T, int BS, bool kStaticAmax, typename Bound>
MOPT_ALWAYS_INLINE void full_blocks_impl(const T* x, T* y, int64_t count, const float* block_amax,
                                         int64_t first_block, const Bound& op) {
  for (int64_t k = 0; k < count; ++k) {
    const T* xb = x + k * BS;
    T* yb = y + k * BS;
    float v[BS];
    int32_t m = 0;
    for (int i = 0; i < BS; ++i) {
      v[i] = load_float(xb + i);
      const int32_t a = static_cast<int32_t>(abs_bits(v[i]));
      m = a > m ? a : m;
    }
    float amax;
    if constexpr (kStaticAmax) {
      amax = block_amax[k];
    } else {
      amax = bits_to_float(static_cast<uint32_t>(m));
    }
    const auto q = op.block(amax, first_block + k);
    for (int i = 0; i < BS; ++i) store_float(yb + i, q(v[i]));
  }
}

// The same source compiled twice (cpu_isa.h), for baseline x86-64 and for AVX2, picked at run
// time; IEEE fp32 without contraction either way, so both give the same bits. `flatten` inlines
// the per-block and per-element math (GCC's size limits otherwise leave it out of line).
#if defined(__GNUC__) || defined(__clang__)
#define MOPT_FLATTEN __attribute__((flatten))
#else
#define MOPT_FLATTEN
#endif

template <typename T, int BS, bool kStaticAmax, typename Bound>
MOPT_FLATTEN void full_blocks_baseline(const T* x, T* y, int64_t count, const float* block_amax,
                                       int64_t first_block, const Bound& op) {
  full_blocks_impl<T, BS, kStaticAmax>(x, y, count, block_amax, first_block, op);
}

template <typename T, int BS, bool kStaticAmax, typename Bound>
MOPT_TARGET_AVX2 MOPT_FLATTEN void full_blocks_avx2(const T* x, T* y, int64_t count,
                                                    const float* block_amax, int64_t first_block,
                                                    const Bound& op) {
  full_blocks_impl<T, BS, kStaticAmax>(x, y, count, block_amax, first_block, op);
}

template <typename T, int BS, typename Bound>
void full_blocks(const T* x, T* y, int64_t count, const float* block_amax, int64_t first_block,
                 const Bound& op, bool avx2) {
  if (block_amax != nullptr) {
    if (avx2)
      full_blocks_avx2<T, BS, true>(x, y, count, block_amax, first_block, op);
    else
      full_blocks_baseline<T, BS, true>(x, y, count, block_amax, first_block, op);
  } else {
    if (avx2)
      full_blocks_avx2<T, BS, false>(x, y, count, block_amax, first_block, op);
    else
      full_blocks_baseline<T, BS, false>(x, y, count, block_amax, first_block, op);
  }
}

// Any block size, partial blocks included.
template <typename T, typename Bound>
void quantize_one_block(const T* x, T* y, int64_t n, const float* block_amax, int64_t block,
                        const Bound& op) {
  const float amax = block_amax != nullptr ? *block_amax : block_amax_of(x, n);
  const auto q = op.block(amax, block);
  for (int64_t i = 0; i < n; ++i) store_float(y + i, q(load_float(x + i)));
}

// Quantizes blocks [begin, end) (row-major over [rows, blocks_per_row]) with op; runs of full
// blocks of 16, 32 or 64 take the fixed-size path.
template <typename T, typename Bound>
void quantize_blocks(const BlockQuantParams& p, const Bound& op, int64_t begin, int64_t end,
                     bool avx2) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t nb = blocks_per_row(p);
  const int64_t bs = p.block_size;
  const int64_t full_per_row = p.row_len / bs;
  int64_t b = begin;
  while (b < end) {
    const int64_t row = b / nb, j = b % nb;
    const int64_t start = row * p.row_len + j * bs;
    const float* ba = p.block_amax != nullptr ? p.block_amax + b : nullptr;
    const int64_t run = std::min(end - b, full_per_row - j);  // full blocks left in this row
    if (run > 0 && (bs == 16 || bs == 32 || bs == 64)) {
      if (bs == 16) full_blocks<T, 16>(x + start, y + start, run, ba, b, op, avx2);
      if (bs == 32) full_blocks<T, 32>(x + start, y + start, run, ba, b, op, avx2);
      if (bs == 64) full_blocks<T, 64>(x + start, y + start, run, ba, b, op, avx2);
      b += run;
    } else {
      quantize_one_block<T>(x + start, y + start, std::min(bs, p.row_len - j * bs), ba, b, op);
      ++b;
    }
  }
}

template <typename T, typename Op>
void run(const BlockQuantParams& p, const Op& op) {
  const int64_t blocks = p.rows * blocks_per_row(p);
  const auto bound = op.bind();
  const int64_t grain = std::max<int64_t>(1, kGrain / p.block_size);
  const bool avx2 = cpu_has_avx2();
  parallel_for(0, blocks, grain,
               [&](int64_t b, int64_t e) { quantize_blocks<T>(p, bound, b, e, avx2); });
}

// NF4 double quantization of the block scales: the same steps, in the same order, as the CUDA
// pipeline (absmax, fixed-chunk fp64 mean, per-group max deviation, dequantized scales).
template <typename T>
void run_nf4_double_quant(const BlockQuantParams& p) {
  const int64_t blocks = p.rows * blocks_per_row(p);
  if (blocks == 0) return;
  std::vector<float> absmax_buf;
  const float* absmax = p.block_amax;
  if (absmax == nullptr) {
    absmax_buf.resize(blocks);
    const T* x = static_cast<const T*>(p.x);
    const int64_t nb = blocks_per_row(p);
    parallel_for(0, blocks, std::max<int64_t>(1, kGrain / p.block_size), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t row = i / nb, j = i % nb;
        absmax_buf[i] = block_amax_of(x + row * p.row_len + j * p.block_size,
                                      std::min(p.block_size, p.row_len - j * p.block_size));
      }
    });
    absmax = absmax_buf.data();
  }
  const int64_t chunks = ceil_div(blocks, kNf4SumChunk);
  std::vector<double> partial(chunks);
  parallel_for(0, chunks, 16, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      partial[c] =
          nf4_scale_sum(absmax, c * kNf4SumChunk, std::min(blocks, (c + 1) * kNf4SumChunk));
    }
  });
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  const float mean = static_cast<float>(total / static_cast<double>(blocks));

  const int64_t group = p.scale_block_size > 0 ? p.scale_block_size : blocks;
  const int64_t groups = ceil_div(blocks, group);
  std::vector<float> out_scales(blocks);
  parallel_for(0, groups, std::max<int64_t>(1, 4096 / group), [&](int64_t gb, int64_t ge) {
    for (int64_t g = gb; g < ge; ++g) {
      const int64_t b0 = g * group, b1 = std::min(blocks, b0 + group);
      uint32_t m = 0;
      for (int64_t i = b0; i < b1; ++i) {
        m = std::max(m, abs_bits(nf4_stat_scale(absmax[i]) - mean));
      }
      const float dq_amax = bits_to_float(m);
      for (int64_t i = b0; i < b1; ++i) {
        out_scales[i] = nf4_dequantized_scale(nf4_stat_scale(absmax[i]), mean, dq_amax);
      }
    }
  });

  BlockQuantParams q = p;
  q.block_amax = absmax;
  run<T>(q, Nf4Op{out_scales.data()});
}

}  // namespace

void block_quant_cpu(const BlockQuantParams& p) {
  block_quant_check(p);
  if (p.rows * p.row_len == 0) return;
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] {
    switch (p.format) {
      case Format::kNVFP4:
        run<T>(p, Nvfp4Op{p.global_amax});
        break;
      case Format::kMX: {
        const float emax = mx_element_max(p.exponent_bits, p.mantissa_bits);
        if (p.exponent_bits == 0) {
          run<T>(p, MxOp<MxIntElement>{MxIntElement{emax}, emax});
        } else {
          const MxFloatElement elem{p.mantissa_bits,
                                    fake_quant::minifloat_min_exponent(p.exponent_bits), emax};
          run<T>(p, MxOp<MxFloatElement>{elem, emax});
        }
        break;
      }
      case Format::kNF4:
        if (p.scale_block_size == 0) {
          run<T>(p, Nf4Op{nullptr});
        } else {
          run_nf4_double_quant<T>(p);
        }
        break;
    }
  });
}

}  // namespace mopt::kernels::block_quant
