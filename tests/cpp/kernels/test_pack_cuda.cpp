// CUDA pack kernels against their CPU twins, bit for bit: the packed codes, every scale output
// and the dequantized weight. Compiled whenever nvcc exists; skipped when no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "common/dtype.h"
#include "cuda_test_util.h"
#include "pack/pack.h"
#include "pack_cases.h"

namespace mopt::kernels {
namespace {

using ::mopt::test::DeviceBuffer;
using test::PackBuffers;

template <typename U>
std::unique_ptr<DeviceBuffer<U>> on_device(const std::vector<U>& v) {
  return v.empty() ? nullptr : std::make_unique<DeviceBuffer<U>>(v);
}

template <typename U>
U* ptr(const std::unique_ptr<DeviceBuffer<U>>& b) {
  return b ? b->get() : nullptr;
}

template <typename T>
void compare(const test::PackCase& c) {
  PackBuffers cpu(c, 21 + static_cast<uint32_t>(c.rows * c.row_len));
  if (c.static_amax && c.format == Format::kNVFP4) {
    cpu.global_amax = 0.0f;
    for (float a : cpu.block_amax) cpu.global_amax = std::max(cpu.global_amax, a);
  }
  std::vector<T> x(cpu.xf.size());
  for (size_t i = 0; i < x.size(); ++i) store_float(&x[i], cpu.xf[i]);
  PackBuffers gpu = cpu;  // same inputs, separate outputs
  pack::PackParams pc = cpu.params(x.data(), test::dtype_of<T>());
  pack::pack_cpu(pc);
  std::vector<T> y_cpu(x.size());
  pc.y = y_cpu.data();
  pack::dequantize_cpu(pc);

  DeviceBuffer<T> dx(x);
  auto d_amax = on_device(gpu.amax);
  auto d_zp = on_device(gpu.zero_point);
  auto d_bamax = on_device(gpu.block_amax);
  auto d_data = on_device(gpu.data);
  auto d_bs = on_device(gpu.block_scale);
  auto d_bsf = on_device(gpu.block_scale_f32);
  auto d_ga = on_device(gpu.group_amax);
  DeviceBuffer<float> d_global(std::vector<float>{gpu.global_amax});
  DeviceBuffer<float> d_ts(std::vector<float>{0.0f}), d_mean(std::vector<float>{0.0f});
  DeviceBuffer<int32_t> d_flag(std::vector<int32_t>{0});
  pack::PackParams pg = gpu.params(dx.get(), test::dtype_of<T>());
  pg.amax = ptr(d_amax);
  pg.zero_point = ptr(d_zp);
  pg.block_amax = ptr(d_bamax);
  pg.global_amax = d_global.get();
  pg.data = ptr(d_data);
  pg.block_scale = ptr(d_bs);
  pg.block_scale_f32 = ptr(d_bsf);
  pg.group_amax = ptr(d_ga);
  pg.tensor_scale = d_ts.get();
  pg.scale_mean = d_mean.get();
  pg.unrepresentable = d_flag.get();
  const size_t ws_bytes = pack::pack_workspace_bytes(pg);
  DeviceBuffer<char> ws(ws_bytes + 16);
  pack::pack_cuda(pg, ws.get(), nullptr);
  DeviceBuffer<T> dy(x.size());
  pg.y = dy.get();
  pack::dequantize_cuda(pg, nullptr);

  EXPECT_TRUE(::mopt::test::bitwise_equal(d_data->to_host(), cpu.data)) << c.name << " codes";
  if (d_bs) EXPECT_TRUE(::mopt::test::bitwise_equal(d_bs->to_host(), cpu.block_scale)) << c.name;
  if (d_bsf) EXPECT_TRUE(::mopt::test::bitwise_equal(d_bsf->to_host(), cpu.block_scale_f32));
  if (d_ga) EXPECT_TRUE(::mopt::test::bitwise_equal(d_ga->to_host(), cpu.group_amax)) << c.name;
  EXPECT_TRUE(::mopt::test::bitwise_equal(d_ts.to_host(), std::vector<float>{cpu.tensor_scale}));
  EXPECT_TRUE(::mopt::test::bitwise_equal(d_mean.to_host(), std::vector<float>{cpu.scale_mean}));
  EXPECT_TRUE(::mopt::test::bitwise_equal(dy.to_host(), y_cpu)) << c.name << " dequantized";
}

TEST(PackCuda, MatchesCpuEveryFormat) {
  MOPT_SKIP_WITHOUT_CUDA();
  for (const auto& c : test::pack_cases()) {
    compare<float>(c);
    compare<BFloat16>(c);
    compare<Half>(c);
  }
}

}  // namespace
}  // namespace mopt::kernels
