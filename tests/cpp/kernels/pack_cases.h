// The formats and layouts the pack kernel tests run (CPU against the fake-quant kernels, CUDA
// against CPU), and a packer that fills PackParams with owned host buffers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "common/dtype.h"
#include "common/format.h"
#include "common/layout.h"
#include "fake_quant/fake_quant.h"
#include "pack/pack.h"
#include "pack/pack_math.h"
#include "reference.h"

namespace mopt::kernels::test {

enum class Layout { kTensor, kRow, kBlock };

template <typename T>
constexpr DType dtype_of() {
  return std::is_same_v<T, float>  ? DType::kFloat32
         : std::is_same_v<T, Half> ? DType::kFloat16
                                   : DType::kBFloat16;
}

struct PackCase {
  std::string name;
  Format format;
  int64_t rows, row_len;
  Layout layout = Layout::kBlock;
  int64_t block = 0;
  int num_bits = 8;
  bool is_unsigned = false, narrow = false, full_range = false, asym = false;
  int e = 0, m = 0;            // minifloat / MX element
  int64_t scale_block = 0;     // NF4 double quantization
  bool static_amax = false;    // NVFP4 / MX / NF4 calibrated block amax
};

inline std::vector<PackCase> pack_cases() {
  using F = Format;
  return {
      {"int8_tensor", F::kInt, 12, 96, Layout::kTensor},
      {"int8_row", F::kInt, 12, 97, Layout::kRow},
      {"int8_row_narrow", F::kInt, 12, 96, Layout::kRow, 0, 8, false, true},
      {"int4_row", F::kInt, 12, 97, Layout::kRow, 0, 4},
      {"int4_b32", F::kInt, 12, 128, Layout::kBlock, 32, 4},
      {"int4_b32_full", F::kInt, 12, 128, Layout::kBlock, 32, 4, false, false, true},
      {"int4_b32_asym", F::kInt, 12, 128, Layout::kBlock, 32, 4, false, false, true, true},
      {"int8_row_asym", F::kInt, 12, 97, Layout::kRow, 0, 8, false, false, true, true},
      {"uint4_row", F::kInt, 12, 96, Layout::kRow, 0, 4, true},
      {"int3_b16", F::kInt, 12, 96, Layout::kBlock, 16, 3},
      {"fp8_e4m3_tensor", F::kMinifloat, 12, 97, Layout::kTensor, 0, 8, false, false, false, false,
       4, 3},
      {"fp8_e5m2_row", F::kMinifloat, 12, 96, Layout::kRow, 0, 8, false, false, false, false, 5, 2},
      {"fp6_e3m2_row", F::kMinifloat, 12, 96, Layout::kRow, 0, 6, false, false, false, false, 3, 2},
      {"fp4_e2m1_b32", F::kMinifloat, 12, 96, Layout::kBlock, 32, 4, false, false, false, false, 2,
       1},
      {"nvfp4", F::kNVFP4, 12, 100, Layout::kBlock, 16},
      {"nvfp4_static", F::kNVFP4, 12, 96, Layout::kBlock, 16, 4, false, false, false, false, 0, 0,
       0, true},
      {"mxfp4", F::kMX, 12, 100, Layout::kBlock, 32, 4, false, false, false, false, 2, 1},
      {"mxfp6_e2m3", F::kMX, 12, 96, Layout::kBlock, 32, 6, false, false, false, false, 2, 3},
      {"mxfp8_e4m3", F::kMX, 12, 96, Layout::kBlock, 32, 8, false, false, false, false, 4, 3},
      {"mxfp8_e5m2_static", F::kMX, 12, 96, Layout::kBlock, 32, 8, false, false, false, false, 5,
       2, 0, true},
      {"mxint8", F::kMX, 12, 96, Layout::kBlock, 32, 8, false, false, false, false, 0, 7},
      {"nf4", F::kNF4, 12, 128, Layout::kBlock, 64},
      {"nf4_dq_groups", F::kNF4, 24, 200, Layout::kBlock, 16, 4, false, false, false, false, 0, 0,
       5},
      {"nf4_dq_one_group", F::kNF4, 24, 128, Layout::kBlock, 64, 4, false, false, false, false, 0,
       0, -1},
  };
}

/// Stored bits per code of a case (as libmopt chooses them).
inline int case_code_bits(const PackCase& c) {
  if (c.format == Format::kNVFP4 || c.format == Format::kNF4) return 4;
  if (c.format == Format::kInt) return c.num_bits <= 4 ? 4 : 8;
  return c.e > 0 && 1 + c.e + c.m <= 4 ? 4 : 8;
}

/// A case's input and every buffer of its PackParams, on the host.
struct PackBuffers {
  PackCase c;
  std::vector<float> xf;
  std::vector<float> amax, zero_point, block_amax;
  float global_amax = 0.0f;
  std::vector<uint8_t> data, block_scale;
  std::vector<float> block_scale_f32, group_amax;
  float tensor_scale = 0.0f, scale_mean = 0.0f;
  int32_t unrepresentable = 0;
  bool keep[2] = {true, false};
  int64_t shape[2];

  int64_t blocks() const {
    return c.block > 0 ? c.rows * ((c.row_len + c.block - 1) / c.block) : 0;
  }

  explicit PackBuffers(const PackCase& pc, uint32_t seed) : c(pc) {
    const int64_t n = c.rows * c.row_len;
    xf = ::mopt::test::random_values(n, seed, 0.3f);
    for (int64_t r = 0; r < c.rows; ++r) {  // rows of different magnitudes
      for (int64_t j = 0; j < c.row_len; ++j) xf[r * c.row_len + j] *= 0.1f + 0.4f * (r % 5);
    }
    for (int i = 0; i < 16 && i < n; ++i) xf[i] = 0.0f;  // a zero block (and -0.0)
    if (n > 20) xf[17] = -0.0f;
    if (c.is_unsigned) {
      for (auto& v : xf) v = std::fabs(v);
    }
    shape[0] = c.rows;
    shape[1] = c.row_len;
    const int64_t nb = blocks();
    if (c.format == Format::kInt || c.format == Format::kMinifloat) {
      const int64_t count = c.layout == Layout::kTensor ? 1
                            : c.layout == Layout::kRow  ? c.rows
                                                        : nb;
      std::vector<float> lo(count, 0.0f), hi(count, 0.0f);
      for (int64_t r = 0; r < c.rows; ++r) {
        for (int64_t j = 0; j < c.row_len; ++j) {
          const int64_t s = c.layout == Layout::kTensor ? 0
                            : c.layout == Layout::kRow  ? r
                                                        : r * (nb / c.rows) + j / c.block;
          lo[s] = std::min(lo[s], xf[r * c.row_len + j]);
          hi[s] = std::max(hi[s], xf[r * c.row_len + j]);
        }
      }
      amax.resize(count);
      for (int64_t s = 0; s < count; ++s) amax[s] = std::max(-lo[s], hi[s]) * 0.9f;  // clips
      if (c.asym) {
        zero_point.resize(count);
        fake_quant::AsymRangeParams ap;
        ap.lo = lo.data();
        ap.hi = hi.data();
        ap.amax = amax.data();
        ap.zero_point = zero_point.data();
        ap.n = count;
        ap.num_bits = c.num_bits;
        fake_quant::int_asym_range_cpu(ap);
      }
    } else {
      if (c.static_amax) {
        block_amax.resize(nb);
        for (int64_t b = 0; b < nb; ++b) block_amax[b] = 0.05f + 0.3f * static_cast<float>(b % 7);
      }
      for (float v : xf) global_amax = std::max(global_amax, std::fabs(v));
      global_amax *= 0.8f;
      block_scale.assign(nb, 0);
      if (c.format == Format::kNF4 && c.scale_block == 0) block_scale_f32.assign(nb, 0.0f);
      if (c.format == Format::kNF4 && c.scale_block != 0) {
        group_amax.assign(c.scale_block > 0 ? (nb + c.scale_block - 1) / c.scale_block : 1, 0.0f);
      }
    }
    data.assign(c.rows * pack::row_bytes(c.row_len, case_code_bits(c)), 0);
  }

  /// PackParams over these buffers for input `x` of `dtype`.
  pack::PackParams params(const void* x, DType dtype) {
    pack::PackParams p;
    p.dtype = dtype;
    p.rows = c.rows;
    p.row_len = c.row_len;
    p.block_size = c.layout == Layout::kBlock ? c.block : 0;
    if (c.layout == Layout::kRow) {
      p.layout = make_reduce_layout(shape, 2, keep);
    } else if (c.layout == Layout::kTensor) {
      const bool none[2] = {false, false};
      p.layout = make_reduce_layout(shape, 2, none);
    }
    p.format = c.format;
    p.num_bits = c.num_bits;
    p.is_unsigned = c.is_unsigned;
    p.narrow_range = c.narrow;
    p.full_range = c.full_range || c.asym;
    p.exponent_bits = c.e;
    p.mantissa_bits = c.m;
    p.code_bits = case_code_bits(c);
    p.scale_block_size = c.scale_block;
    p.amax = amax.empty() ? nullptr : amax.data();
    p.zero_point = zero_point.empty() ? nullptr : zero_point.data();
    p.x = x;
    p.global_amax = &global_amax;
    p.block_amax = block_amax.empty() ? nullptr : block_amax.data();
    p.data = data.data();
    p.block_scale = block_scale.empty() ? nullptr : block_scale.data();
    p.block_scale_f32 = block_scale_f32.empty() ? nullptr : block_scale_f32.data();
    p.tensor_scale = &tensor_scale;
    p.group_amax = group_amax.empty() ? nullptr : group_amax.data();
    p.scale_mean = &scale_mean;
    p.unrepresentable = &unrepresentable;
    return p;
  }
};

}  // namespace mopt::kernels::test
