// Launch-shape helpers shared by the CUDA kernels.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/macros.h"

namespace mopt::kernels {

constexpr int kBlockThreads = 256;

/// Streaming multiprocessors of the current device (queried once per device).
inline int device_sm_count() {
  static int counts[64] = {0};
  int dev = 0;
  MOPT_CHECK_CUDA(cudaGetDevice(&dev));
  if (dev < 64 && counts[dev] > 0) return counts[dev];
  int n = 0;
  MOPT_CHECK_CUDA(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) counts[dev] = n;
  return n;
}

/// Blocks for a grid-stride loop over `work_items`: enough to fill the device, no more.
inline unsigned grid_for(int64_t work_items, int threads = kBlockThreads, int blocks_per_sm = 8) {
  const int64_t needed = (work_items + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(device_sm_count()) * blocks_per_sm;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(needed, cap)));
}

}  // namespace mopt::kernels
