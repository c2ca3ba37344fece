// Pack kernels on the CPU: dequantize(pack(x)) equals the fake-quant kernels' output bit for bit
// for every format and layout, the minifloat codes are the formats' own bit patterns (checked
// against an independent enumeration of each format's values), and the storage layout holds
// what the header says.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "block_quant/block_quant.h"
#include "common/dtype.h"
#include "fake_quant/fake_quant.h"
#include "pack/pack.h"
#include "pack/pack_math.h"
#include "pack_cases.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using test::PackBuffers;
using test::PackCase;

// The fake-quant kernels' output for the case (what the quantizer's forward computes).
template <typename T>
std::vector<T> fake_quantized(PackBuffers& b, const std::vector<T>& x) {
  const PackCase& c = b.c;
  std::vector<T> y(x.size());
  if (c.format == Format::kInt || c.format == Format::kMinifloat) {
    fake_quant::FakeQuantParams p;
    p.x = x.data();
    p.y = y.data();
    p.dtype = test::dtype_of<T>();
    p.amax = b.amax.data();
    if (c.layout == test::Layout::kBlock) {  // the block view [rows, blocks, block]
      const int64_t shape[3] = {c.rows, c.row_len / c.block, c.block};
      const bool keep[3] = {true, true, false};
      p.layout = make_reduce_layout(shape, 3, keep);
    } else {
      p.layout = b.params(x.data(), test::dtype_of<T>()).layout;
    }
    p.format = c.format;
    p.num_bits = c.num_bits;
    p.is_unsigned = c.is_unsigned;
    p.narrow_range = c.narrow;
    p.full_range = c.full_range || c.asym;
    p.zero_point = c.asym ? b.zero_point.data() : nullptr;
    p.exponent_bits = c.e;
    p.mantissa_bits = c.m;
    fake_quant::fake_quant_cpu(p);
  } else {
    block_quant::BlockQuantParams p;
    p.x = x.data();
    p.y = y.data();
    p.dtype = test::dtype_of<T>();
    p.rows = c.rows;
    p.row_len = c.row_len;
    p.block_size = c.block;
    p.format = c.format;
    p.exponent_bits = c.e;
    p.mantissa_bits = c.m;
    float global = b.global_amax;
    if (c.static_amax && c.format == Format::kNVFP4) {  // as libmopt: the max of the block amaxes
      global = 0.0f;
      for (float a : b.block_amax) global = std::max(global, a);
      b.global_amax = global;
    }
    p.global_amax = &b.global_amax;
    p.block_amax = b.block_amax.empty() ? nullptr : b.block_amax.data();
    p.scale_block_size = c.scale_block;
    block_quant::block_quant_cpu(p);
  }
  return y;
}

template <typename T>
void run_case(const PackCase& c) {
  PackBuffers b(c, 11 + static_cast<uint32_t>(c.rows * c.row_len));
  std::vector<T> x(b.xf.size());
  for (size_t i = 0; i < x.size(); ++i) store_float(&x[i], b.xf[i]);
  const std::vector<T> want = fake_quantized(b, x);
  pack::PackParams p = b.params(x.data(), test::dtype_of<T>());
  pack::pack_cpu(p);
  EXPECT_EQ(b.unrepresentable, 0);
  std::vector<T> got(x.size());
  p.y = got.data();
  pack::dequantize_cpu(p);
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(T)), 0)
        << c.name << " element " << i << ": dequantized " << load_float(&got[i])
        << ", fake-quantized " << load_float(&want[i]) << " (x = " << b.xf[i] << ")";
  }
}

TEST(Pack, DequantizeEqualsFakeQuantEveryFormatFloat32) {
  for (const auto& c : test::pack_cases()) run_case<float>(c);
}

TEST(Pack, DequantizeEqualsFakeQuantEveryFormatBFloat16) {
  for (const auto& c : test::pack_cases()) run_case<BFloat16>(c);
}

TEST(Pack, DequantizeEqualsFakeQuantEveryFormatFloat16) {
  for (const auto& c : test::pack_cases()) run_case<Half>(c);
}

// Every finite code of each minifloat decodes to the value an independent enumeration of the
// format gives, and encodes back to itself (both signs; -0 included).
TEST(Pack, MinifloatCodesAreTheFormatsBitPatterns) {
  const int formats[][2] = {{4, 3}, {5, 2}, {3, 2}, {2, 3}, {2, 1}};
  for (const auto& f : formats) {
    const std::vector<double> values = ::mopt::test::minifloat_values(f[0], f[1]);
    const uint32_t sign = 1u << (f[0] + f[1]);
    for (uint32_t code = 0; code < values.size(); ++code) {
      for (const uint32_t s : {0u, sign}) {
        const float v = pack::minifloat_decode(code | s, f[0], f[1]);
        EXPECT_EQ(static_cast<double>(v), s ? -values[code] : values[code])
            << "E" << f[0] << "M" << f[1] << " code " << code;
        EXPECT_EQ(pack::minifloat_encode(v, f[0], f[1]), code | s);
      }
    }
  }
}

TEST(Pack, NibbleLayoutAndSignedCodes) {
  // int4 per row: codes -8..7 as two's complement nibbles, column 2k low, 2k + 1 high
  PackCase c{"int4_row", Format::kInt, 3, 7, test::Layout::kRow, 0, 4};
  PackBuffers b(c, 5);
  pack::PackParams p = b.params(b.xf.data(), DType::kFloat32);
  pack::pack_cpu(p);
  for (int64_t r = 0; r < c.rows; ++r) {
    const float s = 7.0f / b.amax[r];
    for (int64_t j = 0; j < c.row_len; ++j) {
      // rows 0 and 1 are all zero (amax 0: every code 0)
      const float v = b.amax[r] > 0.0f
                          ? std::nearbyint(std::min(7.0f, std::max(-8.0f, b.xf[r * 7 + j] * s)))
                          : 0.0f;
      const uint32_t nibble = (b.data[r * 4 + j / 2] >> ((j & 1) * 4)) & 0xfu;
      EXPECT_EQ(pack::sign_extend(nibble, 4), static_cast<int32_t>(v)) << r << "," << j;
    }
    EXPECT_EQ(b.data[r * 4 + 3] >> 4, 0) << "the odd row's last high nibble stays empty";
  }
}

TEST(Pack, Nvfp4StaticZeroAmaxWithNonzeroWeightsIsReported) {
  PackCase c{"nvfp4_static", Format::kNVFP4, 2, 32, test::Layout::kBlock, 16};
  c.static_amax = true;
  PackBuffers b(c, 3);
  b.block_amax = {0.0f, 1.0f, 1.0f, 1.0f};
  b.global_amax = 1.0f;
  pack::PackParams p = b.params(b.xf.data(), DType::kFloat32);
  b.xf[0] = 0.0f;
  b.xf[1] = 0.5f;  // nonzero weight in the block whose amax is 0 (fake quant uses scale 1)
  pack::pack_cpu(p);
  EXPECT_EQ(b.unrepresentable, 1);
}

TEST(Pack, ChecksArguments) {
  PackCase c{"int8_row", Format::kInt, 2, 8, test::Layout::kRow};
  PackBuffers b(c, 1);
  pack::PackParams p = b.params(b.xf.data(), DType::kFloat32);
  p.num_bits = 12;
  EXPECT_THROW(pack::pack_cpu(p), KernelError);
  p.num_bits = 8;
  p.code_bits = 4;
  EXPECT_THROW(pack::pack_cpu(p), KernelError);
  p.code_bits = 8;
  p.amax = nullptr;
  EXPECT_THROW(pack::dequantize_cpu(p), KernelError);
}

}  // namespace
}  // namespace mopt::kernels
