// CUDA histogram kernel against its CPU twin, count for count. Compiled whenever nvcc exists;
// skipped when no GPU is present.
#include <gtest/gtest.h>

#include <vector>

#include "common/dtype.h"
#include "cuda_test_util.h"
#include "histogram/histogram.h"
#include "reference.h"

namespace mopt::kernels {
namespace {

using histogram::HistogramParams;
using test::DeviceBuffer;

template <typename T>
void compare(int64_t channels, int64_t length, bool channel_last, int64_t max_bins,
             size_t misalign, bool skip_zeros) {
  auto v = test::random_values(channels * length, 3 + static_cast<uint32_t>(length));
  for (size_t i = 0; i < v.size(); i += 11) v[i] = 0.0f;
  std::vector<T> x(v.size());
  for (size_t i = 0; i < v.size(); ++i) store_float(&x[i], v[i]);
  std::vector<float> upper(channels);
  std::vector<int64_t> bins(channels);
  for (int64_t c = 0; c < channels; ++c) {
    upper[c] = 1.0f + 0.5f * static_cast<float>(c % 7);
    bins[c] = max_bins - (c % 3);
  }
  if (channels > 2) bins[1] = 0;

  HistogramParams p;
  p.dtype = std::is_same_v<T, float> ? DType::kFloat32
            : std::is_same_v<T, Half> ? DType::kFloat16 : DType::kBFloat16;
  p.channels = channels;
  p.length = length;
  p.channel_stride = channel_last ? 1 : length;
  p.element_stride = channel_last ? channels : 1;
  p.max_bins = max_bins;
  p.skip_zeros = skip_zeros;
  std::vector<int64_t> cpu(channels * max_bins);
  p.x = x.data();
  p.upper = upper.data();
  p.bins = bins.data();
  p.hist = cpu.data();
  histogram::histogram_cpu(p);

  DeviceBuffer<T> dx(x, misalign);
  DeviceBuffer<float> dup(upper);
  DeviceBuffer<int64_t> dbins(bins);
  DeviceBuffer<int64_t> dout(cpu.size());
  p.x = dx.get();
  p.upper = dup.get();
  p.bins = dbins.get();
  p.hist = dout.get();
  histogram::histogram_cuda(p, nullptr);
  EXPECT_EQ(dout.to_host(), cpu);
}

template <typename T>
void all_cases() {
  for (size_t mis : {0, 1}) {
    compare<T>(1, 1 << 20, false, 2048, mis, false);
    compare<T>(1, 1001, false, 2048, mis, true);
    compare<T>(37, 999, false, 300, mis, false);
    compare<T>(37, 999, true, 300, mis, true);
    compare<T>(2, 5000, false, 20000, mis, false);  // beyond shared memory: global atomics
  }
}

TEST(HistogramCuda, Float32MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<float>();
}

TEST(HistogramCuda, Float16MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<Half>();
}

TEST(HistogramCuda, BFloat16MatchesCpu) {
  MOPT_SKIP_WITHOUT_CUDA();
  all_cases<BFloat16>();
}

TEST(HistogramCuda, ManyChannels) {
  MOPT_SKIP_WITHOUT_CUDA();
  compare<float>(70000, 3, false, 16, 0, false);  // more channels than one grid dimension
}

}  // namespace
}  // namespace mopt::kernels
