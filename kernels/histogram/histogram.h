// Histograms of |x| in fixed-width bins over [0, upper], per tensor or per channel: the
// statistics of the histogram calibrator (entropy, percentile and MSE amax).
#pragma once

#include <cstdint>

#include "common/cuda_stream.h"
#include "common/dtype.h"

namespace mopt::kernels::histogram {

/// Arguments of histogram_cpu / histogram_cuda. The input is viewed as `channels` rows of
/// `length` elements: element n of channel c is x[c * channel_stride + n * element_stride]
/// (any strides, so a channel-last activation needs no transpose). Channel c counts |x| in
/// min(bins[c], max_bins) equal bins over [0, upper[c]]; a channel with no bins or a
/// non-positive upper edge counts nothing. hist is [channels, max_bins] and is overwritten.
struct HistogramParams {
  const void* x = nullptr;
  DType dtype = DType::kFloat32;
  int64_t channels = 1;
  int64_t length = 0;
  int64_t channel_stride = 0;
  int64_t element_stride = 1;
  const float* upper = nullptr;  // [channels]
  const int64_t* bins = nullptr;  // [channels]
  int64_t max_bins = 0;
  bool skip_zeros = false;  // zeros are not counted
  int64_t* hist = nullptr;  // [channels, max_bins]
};

/// Largest max_bins the kernels accept (2^26 bins: 512 MiB of counts per channel).
constexpr int64_t kMaxHistogramBins = int64_t{1} << 26;

/// Validates the sizes and pointers of p; throws KernelError otherwise.
void histogram_check(const HistogramParams& p);

/// CPU implementation: tiles of (channels, elements) in parallel, each counting into private
/// 32-bit histograms that are merged at the end of the tile.
void histogram_cpu(const HistogramParams& p);

/// CUDA implementation on `stream` (device pointers): per-block shared-memory histograms flushed
/// with global atomics; global atomics directly when max_bins exceeds shared memory.
void histogram_cuda(const HistogramParams& p, cudaStream_t stream);

}  // namespace mopt::kernels::histogram
