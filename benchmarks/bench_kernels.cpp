// Torch-free CPU kernel benchmark: fake_quant_cpu and amax_cpu timed directly on raw buffers
// against memcpy of the same bytes, so the table shows how close each kernel is to the memory
// bandwidth floor. Output buffers are allocated and touched once before timing (the kernels, not
// the allocator, are measured; bench_fake_quant.py measures the ops as a PyTorch user sees them).
//
//   build-NAME/mopt_bench_kernels [--numel N] [--repeats R] [--threads T] [--baseline]
//
// --baseline runs the SSE2 loops instead of the AVX2 ones.
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/cpu_isa.h"
#include "common/dtype.h"
#include "common/layout.h"
#include "common/parallel.h"
#include "fake_quant/fake_quant.h"
#include "amax/amax.h"

namespace {

using mopt::kernels::BFloat16;
using mopt::kernels::DType;
using mopt::kernels::Half;
using mopt::kernels::ReduceLayout;
namespace fq = mopt::kernels::fake_quant;
namespace rd = mopt::kernels::reduce;

constexpr int64_t kCols = 4096;

int g_threads = 1;
int bench_threads() { return g_threads; }

/// Median seconds of `repeats` calls of f after two warm-up calls.
double median_seconds(int repeats, const std::function<void()>& f) {
  f();
  f();
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

/// memcpy split over the same threads the kernels use, one call per thread.
void parallel_memcpy(void* dst, const void* src, size_t bytes) {
  const int64_t parts = g_threads;
  const size_t step = (bytes + parts - 1) / parts;
  mopt::kernels::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const size_t lo = std::min(bytes, static_cast<size_t>(c) * step);
      const size_t hi = std::min(bytes, lo + step);
      std::memcpy(static_cast<char*>(dst) + lo, static_cast<const char*>(src) + lo, hi - lo);
    }
  });
}

/// Fills a byte buffer with `numel` values of dtype drawn from N(0, 1).
std::vector<uint8_t> random_input(DType dtype, int64_t numel) {
  std::vector<uint8_t> buf(static_cast<size_t>(numel) * mopt::kernels::dtype_size(dtype));
  std::mt19937 gen(0);
  std::normal_distribution<float> dist;
  for (int64_t i = 0; i < numel; ++i) {
    const float v = dist(gen);
    switch (dtype) {
      case DType::kFloat32:
        reinterpret_cast<float*>(buf.data())[i] = v;
        break;
      case DType::kFloat16:
        mopt::kernels::store_float(reinterpret_cast<Half*>(buf.data()) + i, v);
        break;
      case DType::kBFloat16:
        mopt::kernels::store_float(reinterpret_cast<BFloat16*>(buf.data()) + i, v);
        break;
    }
  }
  return buf;
}

const char* dtype_name(DType d) {
  return d == DType::kFloat32 ? "fp32" : d == DType::kFloat16 ? "fp16" : "bf16";
}

ReduceLayout layout_for(int64_t rows, bool per_channel) {
  const int64_t shape[2] = {rows, kCols};
  const bool keep[2] = {per_channel, false};
  return mopt::kernels::make_reduce_layout(shape, 2, keep);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t numel = int64_t{16} << 20;
  int repeats = 15;
  g_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  bool baseline = false;
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--baseline") {
      baseline = true;
      --i;
    } else if (i + 1 >= argc) {
      fmt::print(stderr, "{} needs a value\n", a);
      return 2;
    } else if (a == "--numel") {
      numel = std::atoll(argv[i + 1]);
    } else if (a == "--repeats") {
      repeats = std::atoi(argv[i + 1]);
    } else if (a == "--threads") {
      g_threads = std::atoi(argv[i + 1]);
    } else {
      fmt::print(stderr, "unknown argument {}\n", a);
      return 2;
    }
  }
  if (numel % kCols != 0 || numel <= 0 || repeats <= 0 || g_threads <= 0) {
    fmt::print(stderr, "--numel must be a positive multiple of {}, repeats and threads > 0\n",
               kCols);
    return 2;
  }
  mopt::kernels::set_parallel_backend(nullptr, bench_threads);
  mopt::kernels::set_cpu_avx2_allowed(!baseline);
  const int64_t rows = numel / kCols;

  fmt::print("mopt_bench_kernels: {} elements ([{}, {}]), {} threads, {} loops, median of {}\n\n",
             numel, rows, kCols, g_threads, mopt::kernels::cpu_has_avx2() ? "AVX2" : "baseline",
             repeats);
  fmt::print("| {:<6} | {:<6} | {:<11} | {:>9} | {:>11} | {:>9} |\n", "kernel", "dtype",
             "granularity", "GB/s", "memcpy GB/s", "of memcpy");
  fmt::print("|--------|--------|-------------|-----------|-------------|-----------|\n");

  for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    const auto x = random_input(dtype, numel);
    std::vector<uint8_t> y(x.size(), 1);  // touched: no page faults inside the timing
    const double bytes_rw = 2.0 * static_cast<double>(x.size());
    const double t_copy =
        median_seconds(repeats, [&] { parallel_memcpy(y.data(), x.data(), x.size()); });
    const double copy_gbps = bytes_rw / t_copy / 1e9;

    for (bool per_channel : {false, true}) {
      const ReduceLayout layout = layout_for(rows, per_channel);
      std::vector<float> amax(layout.out_numel);
      rd::AmaxParams ap;
      ap.x = x.data();
      ap.dtype = dtype;
      ap.layout = layout;
      ap.out = amax.data();
      const char* gran = per_channel ? "per-channel" : "per-tensor";

      for (const char* kind : {"INT8", "FP8"}) {
        fq::FakeQuantParams p;
        p.x = x.data();
        p.y = y.data();
        p.dtype = dtype;
        p.amax = amax.data();
        p.layout = layout;
        if (std::string(kind) == "INT8") {
          p.format = mopt::kernels::Format::kInt;
          p.num_bits = 8;
        } else {
          p.format = mopt::kernels::Format::kMinifloat;
          p.exponent_bits = 4;
          p.mantissa_bits = 3;
        }
        rd::amax_cpu(ap);
        const double t = median_seconds(repeats, [&] { fq::fake_quant_cpu(p); });
        const double gbps = bytes_rw / t / 1e9;
        fmt::print("| {:<6} | {:<6} | {:<11} | {:>9.2f} | {:>11.2f} | {:>8.0f}% |\n", kind,
                   dtype_name(dtype), gran, gbps, copy_gbps, 100.0 * gbps / copy_gbps);
      }
      // amax reads the tensor once: compare with the read half of a memcpy's traffic.
      const double t = median_seconds(repeats, [&] { rd::amax_cpu(ap); });
      const double gbps = static_cast<double>(x.size()) / t / 1e9;
      fmt::print("| {:<6} | {:<6} | {:<11} | {:>9.2f} | {:>11.2f} | {:>8.0f}% |\n", "amax",
                 dtype_name(dtype), gran, gbps, copy_gbps, 100.0 * gbps / copy_gbps);
    }
  }
  fmt::print(
      "\nGB/s counts one read and one write of the tensor for fake quant and memcpy, one read for "
      "amax.\n");
  return 0;
}
