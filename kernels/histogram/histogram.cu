#include <algorithm>

#include "common/launch.cuh"
#include "common/vec.cuh"
#include "histogram/histogram.h"
#include "histogram/histogram_math.h"

namespace mopt::kernels::histogram {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxSharedBins = 12 * 1024;  // 48 KiB of 32-bit counters per block
// Elements of one channel per launch: a block's 32-bit shared counters cannot overflow.
constexpr int64_t kMaxLaunchElements = int64_t{1} << 30;

template <typename T, int VEC, bool SHARED>
__global__ void histogram_kernel(HistogramParams p, int64_t n_begin, int64_t n_end,
                                 bool vectorized) {
  extern __shared__ uint32_t shared_counts[];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t c = blockIdx.y; c < p.channels; c += gridDim.y) {
    const int64_t bc = p.bins[c];
    const int bins = static_cast<int>(bc < p.max_bins ? bc : p.max_bins);
    const float upper = p.upper[c];
    if (bins <= 0 || !(upper > 0.0f)) continue;  // the same for every thread of the block
    const float bins_f = static_cast<float>(bins);
    unsigned long long* row = reinterpret_cast<unsigned long long*>(p.hist + c * p.max_bins);
    if (SHARED) {
      for (int b = threadIdx.x; b < bins; b += blockDim.x) shared_counts[b] = 0u;
      __syncthreads();
    }
    auto count = [&](float a) {
      const int b = histogram_bin(a, bins_f, bins, upper, p.skip_zeros);
      if (b >= 0) {
        if (SHARED) atomicAdd(shared_counts + b, 1u);
        else atomicAdd(row + b, 1ull);
      }
    };
    const T* xc = static_cast<const T*>(p.x) + c * p.channel_stride;
    if (vectorized) {
      const int64_t nvec = (n_end - n_begin) / VEC;
      const auto* xv = reinterpret_cast<const Vec<T, VEC>*>(xc + n_begin);
      for (int64_t v = tid; v < nvec; v += stride) {
        const Vec<T, VEC> in = xv[v];
#pragma unroll
        for (int k = 0; k < VEC; ++k) count(load_abs(&in.v[k]));
      }
      for (int64_t n = n_begin + nvec * VEC + tid; n < n_end; n += stride) count(load_abs(xc + n));
    } else {
      for (int64_t n = n_begin + tid; n < n_end; n += stride) {
        count(load_abs(xc + n * p.element_stride));
      }
    }
    if (SHARED) {
      __syncthreads();
      for (int b = threadIdx.x; b < bins; b += blockDim.x) {
        const uint32_t v = shared_counts[b];
        if (v != 0u) atomicAdd(row + b, static_cast<unsigned long long>(v));
      }
      __syncthreads();  // the next channel reuses the shared counters
    }
  }
}

template <typename T>
void launch(const HistogramParams& p, cudaStream_t stream) {
  constexpr int VEC = vec_width<T>();
  MOPT_CHECK_CUDA(
      cudaMemsetAsync(p.hist, 0, sizeof(int64_t) * p.channels * p.max_bins, stream));
  if (p.length == 0 || p.channels == 0) return;
  // 16-byte loads need every channel's row to start aligned.
  const bool vectorized = p.element_stride == 1 && is_vec_aligned(p.x) &&
                          (p.channels == 1 || p.channel_stride % VEC == 0);
  const bool shared = p.max_bins <= kMaxSharedBins;
  const unsigned grid_y = static_cast<unsigned>(std::min<int64_t>(p.channels, 65535));
  const int64_t per_thread = vectorized ? VEC * 4 : 4;
  const int64_t want_x = (static_cast<int64_t>(device_sm_count()) * 8 + grid_y - 1) / grid_y;
  for (int64_t n0 = 0; n0 < p.length; n0 += kMaxLaunchElements) {
    const int64_t n1 = std::min(p.length, n0 + kMaxLaunchElements);
    const int64_t by_work = (n1 - n0 + kThreads * per_thread - 1) / (kThreads * per_thread);
    const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, std::min(want_x, by_work))), grid_y);
    if (shared) {
      const size_t smem = sizeof(uint32_t) * static_cast<size_t>(p.max_bins);
      histogram_kernel<T, VEC, true><<<grid, kThreads, smem, stream>>>(p, n0, n1, vectorized);
    } else {
      histogram_kernel<T, VEC, false><<<grid, kThreads, 0, stream>>>(p, n0, n1, vectorized);
    }
    MOPT_CHECK_LAUNCH();
  }
}

}  // namespace

void histogram_cuda(const HistogramParams& p, cudaStream_t stream) {
  histogram_check(p);
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] { launch<T>(p, stream); });
}

}  // namespace mopt::kernels::histogram
